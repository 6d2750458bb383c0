//! Cases cite where they come from: juggler's `test/memory.test.js` ("juggler"),
//! loopback-filters' `test/filter.test.js` ("loopback-filters"), and the LoopBack 3
//! docs pages "Where filter" and "Fields filter" ("docs"); the counts in cited cases are
//! theirs. Uncited cases pin down the choices documented in the module docs.

use super::*;
use serde_json::json;

fn obj(value: Value) -> Object {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The seed both juggler and loopback-filters test against, as JSON: dates are the
/// strings `JSON.stringify` makes of them.
fn beatles() -> Vec<Object> {
    [
        json!({"seq": 0, "name": "John Lennon", "email": "john@b3atl3s.co.uk", "role": "lead",
               "birthday": "1980-12-08T00:00:00.000Z", "vip": true,
               "address": {"street": "123 A St", "city": "San Jose", "state": "CA", "zipCode": "95131"}}),
        json!({"seq": 1, "name": "Paul McCartney", "email": "paul@b3atl3s.co.uk", "role": "lead",
               "birthday": "1942-06-18T00:00:00.000Z", "order": 1, "vip": true,
               "address": {"street": "456 B St", "city": "San Mateo", "state": "CA", "zipCode": "94065"}}),
        json!({"seq": 2, "name": "George Harrison", "order": 5, "vip": false}),
        json!({"seq": 3, "name": "Ringo Starr", "order": 6, "vip": false}),
        json!({"seq": 4, "name": "Pete Best", "order": 4}),
        json!({"seq": 5, "name": "Stuart Sutcliffe", "order": 3, "vip": true}),
    ]
    .into_iter()
    .map(obj)
    .collect()
}

fn filter(options: Value) -> Filter {
    Filter::parse(&options, &FilterLimits::default()).unwrap_or_else(|e| panic!("{options}: {e}"))
}

/// The names of the Beatles `where` matches, in seed order.
fn beatles_where(where_: Value) -> Vec<String> {
    let filter = filter(json!({ "where": where_ }));
    beatles()
        .iter()
        .filter(|record| filter.matches(record))
        .map(|record| record["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn count(where_: Value) -> usize {
    beatles_where(where_).len()
}

fn matches(where_: Value, record: Value) -> bool {
    filter(json!({ "where": where_ })).matches(&obj(record))
}

fn error(options: Value) -> String {
    error_with(options, &FilterLimits::default())
}

fn error_with(options: Value, limits: &FilterLimits) -> String {
    match Filter::parse(&options, limits) {
        Ok(_) => panic!("{options} parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn equality() {
    // docs "Equivalence": {where: {carClass: 'fullsize'}}
    assert!(matches(
        json!({"carClass": "fullsize"}),
        json!({"carClass": "fullsize"})
    ));
    assert!(!matches(
        json!({"carClass": "fullsize"}),
        json!({"carClass": "compact"})
    ));
    assert_eq!(
        beatles_where(json!({"name": "John Lennon"})),
        ["John Lennon"]
    );
    assert_eq!(count(json!({"role": "lead"})), 2);
    assert_eq!(count(json!({"vip": true})), 3);
    // Loose, as the connector's String(example) == String(value).
    assert_eq!(beatles_where(json!({"seq": "4"})), ["Pete Best"]);
    assert_eq!(count(json!({"vip": "true"})), 3);
    assert_eq!(count(json!({"name": "john lennon"})), 0);
}

#[test]
fn equality_with_null_matches_null_and_missing() {
    assert_eq!(
        beatles_where(json!({"role": null})),
        [
            "George Harrison",
            "Ringo Starr",
            "Pete Best",
            "Stuart Sutcliffe"
        ]
    );
    assert_eq!(beatles_where(json!({"vip": null})), ["Pete Best"]);
    assert!(matches(json!({"role": null}), json!({"role": null})));
    assert!(!matches(json!({"role": null}), json!({"role": ""})));
    assert!(!matches(json!({"role": "lead"}), json!({})));
}

#[test]
fn eq() {
    // `eq` is in juggler's Operators (types/query.d.ts); same as a plain value.
    assert_eq!(beatles_where(json!({"seq": {"eq": 4}})), ["Pete Best"]);
    assert_eq!(count(json!({"role": {"eq": null}})), 4);
}

#[test]
fn neq() {
    // juggler and loopback-filters: "should support neq operator for number/string/null"
    assert_eq!(count(json!({"seq": {"neq": 4}})), 5);
    assert_eq!(count(json!({"role": {"neq": "lead"}})), 4);
    assert_eq!(
        beatles_where(json!({"role": {"neq": null}})),
        ["John Lennon", "Paul McCartney"]
    );
}

#[test]
fn gt() {
    // juggler and loopback-filters: "should support nested property with gt in query"
    assert_eq!(
        beatles_where(json!({"address.city": {"gt": "San"}})),
        ["John Lennon", "Paul McCartney"]
    );
    // docs "gt and lt": /employees?filter[where][date][gt]=2014-04-01T18:30:00.000Z
    let gt = json!({"date": {"gt": "2014-04-01T18:30:00.000Z"}});
    assert!(matches(
        gt.clone(),
        json!({"date": "2014-04-02T00:00:00.000Z"})
    ));
    assert!(!matches(
        gt.clone(),
        json!({"date": "2014-04-01T18:30:00.000Z"})
    ));
    assert!(!matches(gt, json!({})));
    // docs: /weapons?filter[where][effectiveRange][gt]=900
    assert!(matches(
        json!({"effectiveRange": {"gt": 900}}),
        json!({"effectiveRange": 1200})
    ));
    assert_eq!(count(json!({"seq": {"gt": 3}})), 2);
}

#[test]
fn gte() {
    assert_eq!(
        beatles_where(json!({"seq": {"gte": 4}})),
        ["Pete Best", "Stuart Sutcliffe"]
    );
    assert_eq!(
        count(json!({"birthday": {"gte": "1980-12-08T00:00:00.000Z"}})),
        1
    );
}

#[test]
fn lt() {
    // juggler: "should count using date string": {birthday: {lt: new Date(1990,0).toISOString()}}
    assert_eq!(
        count(json!({"birthday": {"lt": "1990-01-01T00:00:00.000Z"}})),
        2
    );
    // docs: /weapons?filter[where][audibleRange][lt]=10
    assert!(matches(
        json!({"audibleRange": {"lt": 10}}),
        json!({"audibleRange": 9.5})
    ));
    assert!(!matches(
        json!({"audibleRange": {"lt": 10}}),
        json!({"audibleRange": 10})
    ));
}

#[test]
fn lte() {
    assert_eq!(
        beatles_where(json!({"seq": {"lte": 1}})),
        ["John Lennon", "Paul McCartney"]
    );
    assert_eq!(count(json!({"order": {"lte": 3}})), 2);
}

#[test]
fn between() {
    // juggler and loopback-filters: "should successfully extract 5 users from the db"
    assert_eq!(count(json!({"seq": {"between": [1, 5]}})), 5);
    // juggler: "... extract 1 user (Lennon)", "... 2 users", "... 2 users using date
    // range", "... 0 user" (new Date(1970, 0) and so on, as ISO strings)
    assert_eq!(
        beatles_where(
            json!({"birthday": {"between": ["1970-01-01T00:00:00.000Z", "1990-01-01T00:00:00.000Z"]}})
        ),
        ["John Lennon"]
    );
    assert_eq!(
        count(
            json!({"birthday": {"between": ["1940-01-01T00:00:00.000Z", "1990-01-01T00:00:00.000Z"]}})
        ),
        2
    );
    assert_eq!(
        count(
            json!({"birthday": {"between": ["1990-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z"]}})
        ),
        0
    );
    // docs "between": Shirts.find({where: {size: {between: [0,7]}}})
    let shirts = json!({"size": {"between": [0, 7]}});
    assert!(matches(shirts.clone(), json!({"size": 0})));
    assert!(matches(shirts.clone(), json!({"size": 7})));
    assert!(!matches(shirts, json!({"size": 8})));
}

#[test]
fn inq() {
    // docs "inq": Posts.find({where: {id: {inq: [123, 234]}}})
    let posts = json!({"id": {"inq": [123, 234]}});
    assert!(matches(posts.clone(), json!({"id": 234})));
    assert!(!matches(posts, json!({"id": 345})));
    // docs: {"where": {"keywords": {"inq": ["foo", "bar"]}}}, on an array property
    assert!(matches(
        json!({"keywords": {"inq": ["foo", "bar"]}}),
        json!({"keywords": ["baz", "bar"]})
    ));
    assert_eq!(
        beatles_where(json!({"seq": {"inq": [0, 2, "4"]}})),
        ["John Lennon", "George Harrison", "Pete Best"]
    );
    assert_eq!(count(json!({"seq": {"inq": []}})), 0);
}

#[test]
fn nin() {
    // loopback-filters: "should allow to find using nin"
    assert_eq!(count(json!({"name": {"nin": ["George Harrison"]}})), 5);
    assert_eq!(count(json!({"name": {"nin": []}})), 6);
    assert_eq!(count(json!({"role": {"nin": ["lead"]}})), 4);
}

#[test]
fn like() {
    // juggler and loopback-filters: "should allow to find using like",
    // "should support like for no match"
    assert_eq!(
        beatles_where(json!({"name": {"like": "%St%"}})),
        ["Ringo Starr", "Stuart Sutcliffe"]
    );
    assert_eq!(count(json!({"name": {"like": "M%XY"}})), 0);
    // loopback-filters: "should allow to find using like with options"
    assert_eq!(count(json!({"name": {"like": "%St%", "options": "i"}})), 3);
    // docs "like and nlike insensitive": {"title":{"like":"someth.*","options":"i"}}
    let insensitive = json!({"title": {"like": "someth.*", "options": "i"}});
    assert!(matches(
        insensitive.clone(),
        json!({"title": "Something new"})
    ));
    assert!(!matches(insensitive, json!({"title": "nothing"})));
    // As in the connector, unanchored: anchor with ^ and $.
    assert_eq!(
        beatles_where(json!({"name": {"like": "Best"}})),
        ["Pete Best"]
    );
    assert_eq!(
        beatles_where(json!({"name": {"like": "^J%"}})),
        ["John Lennon"]
    );
    assert_eq!(
        beatles_where(json!({"name": {"like": "R_ngo%"}})),
        ["Ringo Starr"]
    );
    assert_eq!(count(json!({"name": {"like": "^J$"}})), 0);
    // Numbers are matched as their text; missing values never match.
    assert!(matches(
        json!({"zip": {"like": "^95%"}}),
        json!({"zip": 95131})
    ));
    assert_eq!(count(json!({"role": {"like": "%"}})), 2);
}

#[test]
fn nlike() {
    // juggler and loopback-filters: "should allow to find using nlike",
    // "should support nlike for no match", "... nlike with options"
    assert_eq!(count(json!({"name": {"nlike": "%St%"}})), 4);
    assert_eq!(count(json!({"name": {"nlike": "M%XY"}})), 6);
    assert_eq!(count(json!({"name": {"nlike": "%St%", "options": "i"}})), 3);
    assert_eq!(count(json!({"role": {"nlike": "%"}})), 4);
}

#[test]
fn ilike() {
    // docs "ilike and nilike", memory connector: User.find({where: {name: {ilike: '%st%'}}})
    assert_eq!(
        beatles_where(json!({"name": {"ilike": "%st%"}})),
        ["Ringo Starr", "Pete Best", "Stuart Sutcliffe"]
    );
    // docs: Post.find({where: {title: {ilike: 'm.-st'}}})
    assert!(matches(
        json!({"title": {"ilike": "m.-st"}}),
        json!({"title": "My-Story"})
    ));
}

#[test]
fn nilike() {
    // docs "ilike and nilike", memory connector: {name: {nilike: 's%xy'}}
    assert_eq!(count(json!({"name": {"nilike": "s%xy"}})), 6);
    assert_eq!(count(json!({"name": {"nilike": "%st%"}})), 3);
}

#[test]
fn regexp() {
    // docs "Regular expressions": {"where": {"model": {"regexp": "^T"}}} and
    // /api/cars?filter[where][model][regexp]=/^t/i
    let cars = [
        json!({"model": "Titan"}),
        json!({"model": "tundra"}),
        json!({"model": "Avalon"}),
    ];
    let models = |where_: Value| {
        let filter = filter(json!({ "where": where_ }));
        cars.iter()
            .filter(|car| filter.matches(&obj((*car).clone())))
            .count()
    };
    assert_eq!(models(json!({"model": {"regexp": "^T"}})), 1);
    assert_eq!(models(json!({"model": {"regexp": "/^t/i"}})), 2);
    assert_eq!(
        models(json!({"model": {"regexp": "^t", "options": "i"}})),
        2
    );
    // loopback-filters: "should allow to find using regexp" ({regexp: /John/})
    assert_eq!(
        beatles_where(json!({"name": {"regexp": "John"}})),
        ["John Lennon"]
    );
    assert_eq!(
        beatles_where(json!({"name": {"regexp": "/^p/i"}})),
        ["Paul McCartney", "Pete Best"]
    );
    assert_eq!(
        beatles_where(json!({"seq": {"regexp": "^[45]$"}})),
        ["Pete Best", "Stuart Sutcliffe"]
    );
    assert_eq!(count(json!({"role": {"regexp": "."}})), 2);
}

#[test]
fn and() {
    // loopback-filters: "should allow to find using an 'and' filter"
    assert_eq!(
        beatles_where(json!({"and": [{"vip": true}, {"role": "lead"}]})),
        ["John Lennon", "Paul McCartney"]
    );
    // docs "and / or": {where: {and: [{title: 'My Post'}, {content: 'Hello'}]}}
    let and = json!({"and": [{"title": "My Post"}, {"content": "Hello"}]});
    assert!(matches(
        and.clone(),
        json!({"title": "My Post", "content": "Hello"})
    ));
    assert!(!matches(and, json!({"title": "My Post", "content": "Bye"})));
    assert_eq!(count(json!({"and": []})), 6);
}

#[test]
fn or() {
    // loopback-filters: "should allow to find using an 'or' filter"
    assert_eq!(
        beatles_where(json!({"or": [{"name": "John Lennon"}, {"name": "Paul McCartney"}]})),
        ["John Lennon", "Paul McCartney"]
    );
    // docs: (field1 = foo and field2 = bar) OR field1 = morefoo
    let or = json!({"or": [
        {"and": [{"field1": "foo"}, {"field2": "bar"}]},
        {"field1": "morefoo"}
    ]});
    assert!(matches(
        or.clone(),
        json!({"field1": "foo", "field2": "bar"})
    ));
    assert!(matches(
        or.clone(),
        json!({"field1": "morefoo", "field2": "x"})
    ));
    assert!(!matches(or, json!({"field1": "foo", "field2": "x"})));
    assert_eq!(count(json!({"or": []})), 0);
}

#[test]
fn and_or_are_anded_with_their_siblings() {
    // loopback-filters let an and/or overwrite the result of the keys before it (here
    // it would return George too, his vip mismatch overwritten); the connector ANDs.
    assert_eq!(
        beatles_where(json!({"vip": true, "or": [{"seq": 0}, {"seq": 2}]})),
        ["John Lennon"]
    );
    assert_eq!(
        beatles_where(json!({"or": [{"seq": 0}, {"seq": 3}], "vip": false})),
        ["Ringo Starr"]
    );
    assert_eq!(
        beatles_where(json!({"or": [{"seq": 1}, {"and": [{"vip": false}, {"order": {"gt": 5}}]}]})),
        ["Paul McCartney", "Ringo Starr"]
    );
}

#[test]
fn nested_properties() {
    // juggler and loopback-filters: "should support nested property in query"
    assert_eq!(
        beatles_where(json!({"address.city": "San Jose"})),
        ["John Lennon"]
    );
    assert_eq!(count(json!({"address.state": "CA"})), 2);
    // A missing step is a missing value, so it equals null.
    assert_eq!(count(json!({"address.city": null})), 4);
    assert!(matches(json!({"a.b.c": 1}), json!({"a": {"b": {"c": 1}}})));
    assert!(!matches(json!({"a.b.c": 1}), json!({"a": {"b": 1}})));
    assert!(!matches(json!({"a.b": 1}), json!({"a.b": 1})));
}

#[test]
fn several_operators_on_one_property_all_apply() {
    // The connector checked gt, gte, lt, lte in that order and used the first found.
    assert_eq!(
        beatles_where(json!({"seq": {"gt": 1, "lt": 4}})),
        ["George Harrison", "Ringo Starr"]
    );
    assert_eq!(
        beatles_where(json!({"seq": {"gte": 1, "neq": 2, "lte": 2}})),
        ["Paul McCartney"]
    );
}

#[test]
fn type_mismatches_fail_the_test() {
    assert_eq!(count(json!({"name": {"gt": 5}})), 0);
    assert_eq!(count(json!({"vip": {"gt": 0}})), 0);
    assert_eq!(count(json!({"address": {"gt": "A"}})), 0);
    // A numeric string against a number compares numerically, as in JavaScript.
    assert_eq!(
        beatles_where(json!({"seq": {"gt": "3"}})),
        ["Pete Best", "Stuart Sutcliffe"]
    );
    assert!(!matches(json!({"n": {"lt": 9}}), json!({"n": "10"})));
    assert!(matches(json!({"n": {"gt": 9}}), json!({"n": "10"})));
    // ...so its negation holds.
    assert_eq!(count(json!({"name": {"neq": 5}})), 6);
}

#[test]
fn array_values_match_on_any_element() {
    let record = json!({"tags": ["a", "b"], "items": [{"name": "x"}, {"name": "y"}], "none": []});
    assert!(matches(json!({"tags": "a"}), record.clone()));
    assert!(matches(
        json!({"tags": {"inq": ["c", "b"]}}),
        record.clone()
    ));
    assert!(matches(json!({"tags": {"like": "^b"}}), record.clone()));
    assert!(!matches(json!({"tags": "c"}), record.clone()));
    // Negations are "no element", never "some element is not".
    assert!(!matches(json!({"tags": {"neq": "a"}}), record.clone()));
    assert!(!matches(json!({"tags": {"nin": ["a"]}}), record.clone()));
    assert!(matches(json!({"tags": {"nin": ["c"]}}), record.clone()));
    assert!(matches(json!({"none": {"neq": "a"}}), record.clone()));
    assert!(!matches(json!({"none": "a"}), record.clone()));
    // Paths through arrays of objects, and indexes.
    assert!(matches(json!({"items.name": "y"}), record.clone()));
    assert!(!matches(json!({"items.name": "z"}), record.clone()));
    assert!(matches(json!({"items.name": {"neq": "z"}}), record.clone()));
    assert!(matches(json!({"tags.1": "b"}), record.clone()));
    assert!(matches(json!({"items.0.name": "x"}), record.clone()));
    assert!(!matches(json!({"items.0.name": "y"}), record));
}

fn car() -> Object {
    obj(json!({"vin": "1N6AA", "make": "Nissan", "id": "1", "model": "Titan"}))
}

fn projected(fields: Value) -> String {
    Value::Object(filter(json!({ "fields": fields })).project(&car())).to_string()
}

#[test]
fn fields_array_keeps_only_those_in_record_order() {
    // docs "Fields filter": { fields: ["id", "make", "model"] }
    assert_eq!(
        projected(json!(["model", "id", "make"])),
        r#"{"make":"Nissan","id":"1","model":"Titan"}"#
    );
    assert_eq!(projected(json!(["id", "absent"])), r#"{"id":"1"}"#);
    // juggler's fieldsToArray: a string is one name, an empty array is every field.
    assert_eq!(projected(json!("make")), r#"{"make":"Nissan"}"#);
    assert_eq!(
        projected(json!([])),
        r#"{"vin":"1N6AA","make":"Nissan","id":"1","model":"Titan"}"#
    );
}

#[test]
fn fields_object_true_keeps_those() {
    // docs: ?filter[fields][id]=true&filter[fields][make]=true&filter[fields][model]=true.
    // LoopBack's change stream sent {} here (DESIGN.md); we follow the docs.
    assert_eq!(
        projected(json!({"id": true, "make": true, "model": true})),
        r#"{"make":"Nissan","id":"1","model":"Titan"}"#
    );
}

#[test]
fn fields_object_false_drops_those() {
    // docs: { fields: {vin: false} }
    assert_eq!(
        projected(json!({"vin": false})),
        r#"{"make":"Nissan","id":"1","model":"Titan"}"#
    );
    assert_eq!(
        projected(json!({"vin": false, "id": false})),
        r#"{"make":"Nissan","model":"Titan"}"#
    );
}

#[test]
fn fields_object_mixed_true_wins() {
    // juggler's fieldsToArray: with any true, only the true ones are kept.
    assert_eq!(
        projected(json!({"vin": false, "model": true})),
        r#"{"model":"Titan"}"#
    );
    assert_eq!(
        projected(json!({})),
        r#"{"vin":"1N6AA","make":"Nissan","id":"1","model":"Titan"}"#
    );
}

#[test]
fn empty_filters_let_everything_through() {
    for options in [
        json!(null),
        json!({}),
        json!({"where": {}}),
        json!({"where": null, "fields": null}),
        json!({"fields": []}),
        json!({"fields": {}}),
    ] {
        let filter = filter(options.clone());
        assert!(filter.is_empty(), "{options}");
        assert!(filter.matches(&car()), "{options}");
        assert_eq!(filter.project(&car()), car(), "{options}");
    }
    assert!(Filter::default().is_empty());
    assert!(!filter(json!({"where": {"and": []}})).is_empty());
    assert!(!filter(json!({"fields": ["id"]})).is_empty());
}

#[test]
fn where_and_fields_together() {
    let filter = filter(json!({"where": {"make": "Nissan"}, "fields": ["model"]}));
    assert!(filter.matches(&car()));
    assert_eq!(
        Value::Object(filter.project(&car())).to_string(),
        r#"{"model":"Titan"}"#
    );
    assert!(!filter.matches(&obj(json!({"make": "Toyota", "model": "Titan"}))));
}

#[test]
fn parse_str_reads_query_json() {
    let limits = FilterLimits::default();
    let filter = Filter::parse_str(r#"{"where":{"odo":{"lt":30000}}}"#, &limits).unwrap();
    assert!(filter.matches(&obj(json!({"odo": 29999}))));
    assert_eq!(
        Filter::parse_str("{", &limits).unwrap_err().to_string(),
        "options is not valid JSON: EOF while parsing an object at line 1 column 1"
    );
    // serde_json's own nesting limit stops deep text before we see it.
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    assert!(matches!(
        Filter::parse_str(&deep, &limits),
        Err(FilterError::Json { .. })
    ));
    assert_eq!(
        Filter::parse_str(&" ".repeat(4097), &limits).unwrap_err(),
        FilterError::TooBig { max: 4096 }
    );
}

#[test]
fn keys_that_do_not_apply_to_a_stream_are_refused() {
    for key in ["limit", "skip", "offset", "order", "include"] {
        assert_eq!(
            error(json!({ key: 1 })),
            format!(
                "options.{key}: \"{key}\" does not apply to a change stream; only where and fields do"
            )
        );
    }
    assert_eq!(
        error(json!({"wehre": {"n": 1}})),
        "options.wehre: unknown key; only where and fields apply to a change stream"
    );
}

fn nested_or(levels: usize) -> Value {
    (0..levels).fold(json!({"n": 1}), |inner, _| json!({"or": [inner]}))
}

#[test]
fn depth_limit() {
    let limits = FilterLimits::default();
    // where is level 1, each or/and one more: 7 ors nest 8 levels.
    assert!(Filter::parse(&json!({ "where": nested_or(7) }), &limits).is_ok());
    assert_eq!(
        error(json!({ "where": nested_or(8) })),
        format!(
            "where{}: nested more than 8 levels deep",
            ".or[0]".repeat(8)
        )
    );
    assert!(Filter::parse(&json!({"where": {"a.b.c.d.e.f.g.h": 1}}), &limits).is_ok());
    assert_eq!(
        error(json!({"where": {"a.b.c.d.e.f.g.h.i": 1}})),
        "where.a.b.c.d.e.f.g.h.i: nested more than 8 levels deep"
    );
    let shallow = FilterLimits {
        max_depth: 2,
        ..limits
    };
    assert_eq!(
        error_with(json!({"where": {"and": [{"or": [{"n": 1}]}]}}), &shallow),
        "where.and[0].or[0]: nested more than 2 levels deep"
    );
}

#[test]
fn size_limit() {
    let limits = FilterLimits {
        max_bytes: 32,
        ..FilterLimits::default()
    };
    // {"where":{"name":"0123456789ab"}} is 33 bytes.
    assert!(Filter::parse(&json!({"where": {"name": "0123456789a"}}), &limits).is_ok());
    assert_eq!(
        error_with(json!({"where": {"name": "0123456789ab"}}), &limits),
        "options is larger than 32 bytes of JSON"
    );
    // A huge value costs only max_bytes of serialization to refuse.
    let huge = json!({"where": {"n": {"inq": vec![1; 1_000_000]}}});
    assert_eq!(error(huge), "options is larger than 4096 bytes of JSON");
}

#[test]
fn condition_limit() {
    let ors =
        |n: usize| json!({"where": {"or": (0..n).map(|i| json!({"id": i})).collect::<Vec<_>>()}});
    assert!(Filter::parse(&ors(64), &FilterLimits::default()).is_ok());
    assert_eq!(error(ors(65)), "where has more than 64 conditions");
    // Every operator counts; `options` does not.
    let limits = FilterLimits {
        max_conditions: 2,
        ..FilterLimits::default()
    };
    assert!(
        Filter::parse(
            &json!({"where": {"n": {"gt": 1, "like": "a", "options": "i"}}}),
            &limits
        )
        .is_ok()
    );
    assert_eq!(
        error_with(json!({"where": {"n": {"gt": 1, "lt": 5}, "m": 1}}), &limits),
        "where has more than 2 conditions"
    );
}

#[test]
fn pattern_limit() {
    let at_limit = "a".repeat(DEFAULT_MAX_PATTERN_BYTES);
    assert!(
        Filter::parse(
            &json!({"where": {"n": {"like": at_limit}}}),
            &FilterLimits::default()
        )
        .is_ok()
    );
    assert_eq!(
        error(json!({"where": {"n": {"like": format!("{at_limit}a")}}})),
        "where.n.like: pattern is longer than 256 bytes"
    );
    assert_eq!(
        error(json!({"where": {"n": {"regexp": r"\p{L}{100}"}}})),
        "where.n.regexp: invalid regular expression: the pattern compiles too big"
    );
}

#[test]
fn error_messages() {
    let cases = [
        (json!([]), "options: expected an object, got an array"),
        (json!("x"), "options: expected an object, got a string"),
        (
            json!({"where": []}),
            "where: expected an object, got an array",
        ),
        (
            json!({"where": {"age": {"gt": []}}}),
            "where.age.gt: expected a number or string, got an array",
        ),
        (
            json!({"where": {"age": {"lte": true}}}),
            "where.age.lte: expected a number or string, got a boolean",
        ),
        (
            json!({"where": {"n": {"foo": 1}}}),
            "where.n: unknown operator \"foo\"; the operators are eq, neq, gt, gte, lt, lte, \
             between, inq, nin, like, nlike, ilike, nilike and regexp (for a nested property \
             write \"n.foo\")",
        ),
        (
            json!({"where": {"address": {"city": "San Jose"}}}),
            "where.address: unknown operator \"city\"; the operators are eq, neq, gt, gte, lt, \
             lte, between, inq, nin, like, nlike, ilike, nilike and regexp (for a nested \
             property write \"address.city\")",
        ),
        (
            json!({"where": {"geo": {"near": "153.536,-28.1"}}}),
            "where.geo: unknown operator \"near\"; the operators are eq, neq, gt, gte, lt, lte, \
             between, inq, nin, like, nlike, ilike, nilike and regexp (for a nested property \
             write \"geo.near\")",
        ),
        (
            json!({"where": {"n": {}}}),
            "where.n: empty condition; give a value, or operators such as {\"gt\": 1}",
        ),
        (
            json!({"where": {"n": [1]}}),
            "where.n: expected a value or an operator object, got an array",
        ),
        (
            json!({"where": {"n": {"eq": {}}}}),
            "where.n.eq: expected a string, number, boolean or null, got an object",
        ),
        (
            json!({"where": {"n": {"neq": [1]}}}),
            "where.n.neq: expected a string, number, boolean or null, got an array",
        ),
        // juggler: "should throw if the inq/nin value is not an array"
        (
            json!({"where": {"name": {"inq": "12"}}}),
            "where.name.inq: expected an array of values, got a string",
        ),
        (
            json!({"where": {"name": {"nin": "12"}}}),
            "where.name.nin: expected an array of values, got a string",
        ),
        (
            json!({"where": {"n": {"nin": [1, [2]]}}}),
            "where.n.nin[1]: expected a string, number, boolean or null, got an array",
        ),
        // juggler: "should throw if the between value is not an array (of length 2)"
        (
            json!({"where": {"name": {"between": "12"}}}),
            "where.name.between: expected an array of two numbers or strings, got a string",
        ),
        (
            json!({"where": {"name": {"between": ["12"]}}}),
            "where.name.between: expected an array of two values, got 1",
        ),
        (
            json!({"where": {"n": {"between": [1, null]}}}),
            "where.n.between[1]: expected a number or string, got null",
        ),
        // juggler: "should throw if the like/nlike value is not string or regexp"
        (
            json!({"where": {"name": {"like": 123}}}),
            "where.name.like: expected a string, got a number",
        ),
        (
            json!({"where": {"name": {"nlike": 123}}}),
            "where.name.nlike: expected a string, got a number",
        ),
        // loopback-filters: "should throw if the regexp value is not string or regexp"
        (
            json!({"where": {"name": {"regexp": 123}}}),
            "where.name.regexp: expected a string, got a number",
        ),
        (
            json!({"where": {"name": {"regexp": "(a"}}}),
            "where.name.regexp: invalid regular expression: unclosed group",
        ),
        (
            json!({"where": {"name": {"ilike": "(?<=a)b"}}}),
            "where.name.ilike: invalid regular expression: look-around, including look-ahead \
             and look-behind, is not supported",
        ),
        (
            json!({"where": {"name": {"regexp": "/a/x"}}}),
            "where.name.regexp: unsupported regular expression flag 'x'; use i, m or g",
        ),
        (
            json!({"where": {"name": {"like": "a", "options": "q"}}}),
            "where.name.options: unsupported regular expression flag 'q'; use i, m or g",
        ),
        (
            json!({"where": {"name": {"like": "a", "options": 1}}}),
            "where.name.options: expected a string of flags such as \"i\", got a number",
        ),
        (
            json!({"where": {"name": {"gt": "a", "options": "i"}}}),
            "where.name.options: options only applies to like, nlike, ilike, nilike and regexp",
        ),
        (
            json!({"where": {"and": {"n": 1}}}),
            "where.and: expected an array of where objects, got an object",
        ),
        (
            json!({"where": {"or": [{"n": 1}, 1]}}),
            "where.or[1]: expected an object, got a number",
        ),
        (
            json!({"where": {"or": [{"n": {"lt": null}}]}}),
            "where.or[0].n.lt: expected a number or string, got null",
        ),
        (
            json!({"where": {"a..b": 1}}),
            "where: property name \"a..b\" is empty or has an empty segment",
        ),
        (
            json!({"where": {"and": [{"": 1}]}}),
            "where.and[0]: property name \"\" is empty or has an empty segment",
        ),
        (
            json!({"fields": [1]}),
            "fields[0]: expected a property name (a string), got a number",
        ),
        (
            json!({"fields": {"name": "yes"}}),
            "fields.name: expected true or false, got a string",
        ),
        (
            json!({"fields": 5}),
            "fields: expected an array of property names or an object of true/false, got a number",
        ),
    ];
    for (options, message) in cases {
        assert_eq!(error(options), message);
    }
}

#[test]
fn odd_input_is_an_error_or_a_filter_never_a_panic() {
    let limits = FilterLimits {
        max_depth: 0,
        max_conditions: 0,
        max_bytes: 0,
        max_pattern_bytes: 0,
    };
    let odd = [
        json!(1),
        json!(true),
        json!({"where": 1}),
        json!({"where": {"and": [[]]}}),
        json!({"where": {"or": [{"or": [{"or": []}]}]}}),
        json!({"where": {".": 1}}),
        json!({"where": {"n.": {"gt": "z"}}}),
        json!({"where": {"n": {"like": ""}}}),
        json!({"where": {"n": {"regexp": "/"}}}),
        json!({"where": {"n": {"regexp": "//"}}}),
        json!({"where": {"n": {"like": "\\"}}}),
        json!({"where": {"n": {"between": [1, 2, 3]}}}),
        json!({"where": {"n": {"options": "i"}}}),
        json!({"where": {"n": {"inq": [{}]}}}),
        json!({"where": {"n": 1e300}}),
        json!({"where": {"n": {"gt": -1e300}}}),
        json!({"fields": [[]]}),
        json!({"fields": {"": false}}),
        nested_or(64),
    ];
    let record = obj(json!({"n": [[1], {"": null}], "": 0, "m": u64::MAX}));
    for options in odd {
        for limits in [&FilterLimits::default(), &limits] {
            if let Ok(filter) = Filter::parse(&options, limits) {
                filter.matches(&record);
                filter.project(&record);
            }
        }
    }
}

#[test]
fn a_filter_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Filter>();
    shared::<FilterError>();
}

#[test]
fn a_scope_only_narrows() {
    let limits = FilterLimits::default();
    let scope = Filter::from_where(&json!({"ownerId": "u1"}), &limits).unwrap();
    let own = obj(json!({"ownerId": "u1", "status": "open"}));
    let theirs = obj(json!({"ownerId": "u2", "status": "open"}));
    // No filter of the client's own: the scope alone.
    let scoped = Filter::default().restricted_to(&scope);
    assert!(scoped.matches(&own) && !scoped.matches(&theirs));
    // The client's filter and the scope: both must match; an `or` cannot widen it.
    let client = Filter::parse(
        &json!({"where": {"or": [{"status": "open"}, {"ownerId": "u2"}]}, "fields": ["status"]}),
        &limits,
    )
    .unwrap();
    let scoped = client.restricted_to(&scope);
    assert!(scoped.matches(&own) && !scoped.matches(&theirs));
    assert!(scoped.projects(), "fields stay the client's");
    assert!(Filter::from_where(&json!({"n": {"nope": 1}}), &limits).is_err());
}

#[test]
fn fields_flags_may_be_numbers_as_javascript_reads_them() {
    let limits = FilterLimits::default();
    let record = obj(json!({"name": "a", "secret": "s", "id": 1}));
    let keep = Filter::parse(&json!({"fields": {"name": 1}}), &limits).unwrap();
    assert_eq!(keep.project(&record), obj(json!({"name": "a"})));
    let drop = Filter::parse(&json!({"fields": {"secret": 0}}), &limits).unwrap();
    assert_eq!(drop.project(&record), obj(json!({"name": "a", "id": 1})));
}
