//! Checks a binary's settings table in the README against its definitions, so the two
//! cannot drift: each binary has a unit test that calls [`readme_disagreements`].
//!
//! The table is the one in the `## Settings` section whose `env` column names the
//! binary's prefix; its columns are `setting | env | flag | default | meaning`. Each of
//! the first three cells is one backticked value. A default cell is `unset` (no default)
//! or starts with the backticked default; what follows it is a remark.

use std::collections::HashMap;

use super::Setting;

/// One row of a README settings table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    setting: String,
    env: String,
    flag: String,
    default: Option<String>,
}

/// Every way the table for `prefix` in `readme` and `settings` disagree (setting name,
/// env name, flag, default), both ways: a setting with no row, a row with no setting.
/// Empty when they agree.
pub fn readme_disagreements(readme: &str, prefix: &str, settings: &[Setting]) -> Vec<String> {
    let rows = match table(readme, prefix) {
        Ok(rows) => rows,
        Err(problem) => return vec![problem],
    };
    let mut wrong = Vec::new();
    let mut by_key: HashMap<&str, &Row> = HashMap::new();
    for row in &rows {
        if by_key.insert(row.setting.as_str(), row).is_some() {
            wrong.push(format!("README lists `{}` twice", row.setting));
        }
    }
    for setting in settings {
        let Some(row) = by_key.remove(setting.key) else {
            wrong.push(format!(
                "setting `{}` is missing from the README's {prefix} table",
                setting.key
            ));
            continue;
        };
        if row.env != setting.env {
            wrong.push(format!(
                "`{}`: README env `{}`, code `{}`",
                setting.key, row.env, setting.env
            ));
        }
        if row.flag != setting.flag {
            wrong.push(format!(
                "`{}`: README flag `{}`, code `{}`",
                setting.key, row.flag, setting.flag
            ));
        }
        if row.default != setting.default {
            let show =
                |d: &Option<String>| d.as_ref().map_or("unset".to_owned(), |d| format!("`{d}`"));
            wrong.push(format!(
                "`{}`: README default {}, code {}",
                setting.key,
                show(&row.default),
                show(&setting.default)
            ));
        }
    }
    let mut extra: Vec<&str> = by_key.into_keys().collect();
    extra.sort_unstable();
    for key in extra {
        wrong.push(format!("README row `{key}` has no setting in the code"));
    }
    wrong
}

/// The rows of the `## Settings` table whose env names start with `<prefix>_`.
fn table(readme: &str, prefix: &str) -> Result<Vec<Row>, String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Settings\n"))
        .ok_or("README has no `## Settings` section")?;
    // Tables are runs of lines starting with `|`; the first two are header and rule.
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut in_table = false;
    for line in section.lines().map(str::trim) {
        if line.starts_with('|') {
            if !in_table {
                tables.push(Vec::new());
            }
            in_table = true;
            if let Some(table) = tables.last_mut() {
                table.push(line);
            }
        } else {
            in_table = false;
        }
    }
    let wanted = format!("{prefix}_");
    let mut found = Vec::new();
    for lines in tables {
        let rows = lines
            .iter()
            .skip(2)
            .map(|line| row(line))
            .collect::<Result<Vec<_>, _>>()?;
        if rows.iter().any(|r| r.env.starts_with(&wanted)) {
            found.push(rows);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(format!(
            "expected one settings table with `{wanted}*` env names in the README, found {n}"
        )),
    }
}

fn row(line: &str) -> Result<Row, String> {
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    let [setting, env, flag, default, ..] = cells[..] else {
        return Err(format!("README settings row has too few cells: {line}"));
    };
    let code = |cell: &str| {
        first_code(cell).ok_or_else(|| format!("README cell {cell:?} is not a `value`: {line}"))
    };
    let default = if default == "unset" {
        None
    } else if default.starts_with('`') {
        Some(code(default)?)
    } else {
        return Err(format!(
            "README default {default:?} is neither `unset` nor starts with the backticked default: {line}"
        ));
    };
    Ok(Row {
        setting: code(setting)?,
        env: code(env)?,
        flag: code(flag)?,
        default,
    })
}

/// The first backticked value of `cell`, if the cell starts with one.
fn first_code(cell: &str) -> Option<String> {
    let rest = cell.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::DefaultText;
    use super::*;

    const README: &str = "# x\n\n## Settings\n\nSome prose.\n\n\
        | setting | env | flag | default | meaning |\n\
        |---|---|---|---|---|\n\
        | `listen` | `P_LISTEN` | `--listen` | `0.0.0.0:1` | where |\n\
        | `redis_url` | `P_REDIS_URL` | `--redis-url` | `redis://h/` (when `x` is unset) | Redis |\n\
        | `peers` | `P_PEERS` | `--peers` | unset | others |\n\
        \nOther (`Q_` prefix):\n\n\
        | setting | env | flag | default | meaning |\n\
        |---|---|---|---|---|\n\
        | `listen` | `Q_LISTEN` | `--listen` | `0.0.0.0:2` | where |\n\
        \n## Next\n\n| a | b |\n|---|---|\n| `P_X` | `P_Y` |\n";

    fn settings() -> Vec<Setting> {
        let d = |t: &str| Some(DefaultText::of(&t));
        vec![
            Setting::new("P", "listen", " Listen\n", d("0.0.0.0:1")),
            Setting::new("P", "redis_url", " Redis\n", d("redis://h/")),
            Setting::new("P", "peers", " Peers\n", None),
        ]
    }

    #[test]
    fn agreeing_tables_pass() {
        assert_eq!(
            readme_disagreements(README, "P", &settings()),
            Vec::<String>::new()
        );
        let q = vec![Setting::new(
            "Q",
            "listen",
            " L\n",
            Some(DefaultText::of(&"0.0.0.0:2")),
        )];
        assert_eq!(readme_disagreements(README, "Q", &q), Vec::<String>::new());
    }

    #[test]
    fn each_disagreement_is_named() {
        let wrong_default = README.replace("`0.0.0.0:1`", "`0.0.0.0:9`");
        assert_eq!(
            readme_disagreements(&wrong_default, "P", &settings()),
            ["`listen`: README default `0.0.0.0:9`, code `0.0.0.0:1`"]
        );
        let unset = README.replace("`redis://h/` (when `x` is unset)", "unset");
        assert_eq!(
            readme_disagreements(&unset, "P", &settings()),
            ["`redis_url`: README default unset, code `redis://h/`"]
        );
        let env = README.replace("`P_PEERS`", "`P_PEER`");
        assert_eq!(
            readme_disagreements(&env, "P", &settings()),
            ["`peers`: README env `P_PEER`, code `P_PEERS`"]
        );
        let flag = README.replace("`--peers`", "`--peer`");
        assert_eq!(
            readme_disagreements(&flag, "P", &settings()),
            ["`peers`: README flag `--peer`, code `--peers`"]
        );
        let mut more = settings();
        more.push(Setting::new("P", "retry", " Retry\n", None));
        assert_eq!(
            readme_disagreements(README, "P", &more),
            ["setting `retry` is missing from the README's P table"]
        );
        assert_eq!(
            readme_disagreements(README, "P", &settings()[..2]),
            ["README row `peers` has no setting in the code"]
        );
        let prose = README.replace("| unset |", "| none |");
        assert!(
            readme_disagreements(&prose, "P", &settings())[0].contains("neither `unset`"),
            "a default cell that follows no rule fails"
        );
        assert!(!readme_disagreements(README, "R", &settings()).is_empty());
    }
}
