#!/usr/bin/env node
// Regenerates proto.json, the JSON descriptor of tokenbroker's proto that the package
// loads at run time: the package cannot read ../../proto once installed, so the descriptor
// is committed, and test/descriptor.test.js checks that it equals a fresh generation.
//   node generate.js            writes proto.json
//   node generate.js --check    exits 1 when proto.json is out of date
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const protobuf = require('protobufjs');

/** The proto tree of the repository this package lives in. */
const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
/** The files the package needs; their imports come along. */
const ENTRY = 'tokenbroker/v1/token_service.proto';
/** Where the descriptor is written. */
const OUTPUT = path.join(__dirname, 'proto.json');

/**
 * The descriptor as the text proto.json must hold. Field names are camelCase (protobufjs'
 * default); google/protobuf's well-known types come from protobufjs' bundled copies, so
 * Timestamp and Duration are in the descriptor too.
 * @returns {string}
 */
function generate() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    target.startsWith('google/protobuf/') ? target : path.join(PROTO_DIR, target);
  root.loadSync(ENTRY);
  root.resolveAll();
  return `${JSON.stringify(root.toJSON(), null, 2)}\n`;
}

if (require.main === module) {
  const fresh = generate();
  if (process.argv.includes('--check')) {
    const current = fs.existsSync(OUTPUT) ? fs.readFileSync(OUTPUT, 'utf8') : '';
    if (current !== fresh) {
      console.error('proto.json is out of date: run `node generate.js`');
      process.exit(1);
    }
    console.log('proto.json is up to date');
  } else {
    fs.writeFileSync(OUTPUT, fresh);
    console.log(`wrote ${path.relative(process.cwd(), OUTPUT)}`);
  }
}

module.exports = { generate, OUTPUT };
