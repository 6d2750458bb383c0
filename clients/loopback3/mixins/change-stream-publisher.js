'use strict';
// The mixin under the name loopback-boot gives this file: `ChangeStreamPublisher`. List
// this folder in model-config.json's `_meta.mixins` (README, "Five-minute migration").
module.exports = require('..');
