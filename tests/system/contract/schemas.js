// The published contract, loaded the way any client would: docs/schema/*.json compiled by
// ajv in strict mode (JSON Schema 2020-12, standard formats only), and docs/asyncapi.yaml
// parsed by the official AsyncAPI parser. Run alone (`node schemas.js <docs dir>`) it prints
// a JSON report and exits 1 on any compile error or parser diagnostic.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

const SEVERITY = ["error", "warning", "info", "hint"];

function strictAjv() {
  // strict: true turns on strictSchema, strictNumbers, strictTypes, strictTuples and
  // strictRequired: unknown keywords or formats, and ambiguous schemas, are compile errors.
  const ajv = new Ajv2020({ strict: true, allErrors: true, validateFormats: true });
  addFormats(ajv);
  return ajv;
}

// Compile every docs/schema/*.json; returns {validators: {file: fn}, errors: [{file, error}]}.
function loadSchemas(docsDir) {
  const dir = path.join(docsDir, "schema");
  const validators = {};
  const errors = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
    try {
      const schema = JSON.parse(fs.readFileSync(path.join(dir, file), "utf8"));
      if (schema.$schema !== "https://json-schema.org/draft/2020-12/schema") {
        throw new Error(`$schema is ${schema.$schema}, not JSON Schema 2020-12`);
      }
      validators[file] = strictAjv().compile(schema);
    } catch (err) {
      errors.push({ file, error: String(err.message || err) });
    }
  }
  return { validators, errors };
}

// Parse docs/asyncapi.yaml; every diagnostic (error, warning, info or hint) is reported.
async function parseAsyncApi(docsDir) {
  const { Parser } = require("@asyncapi/parser");
  const text = fs.readFileSync(path.join(docsDir, "asyncapi.yaml"), "utf8");
  const { document, diagnostics } = await new Parser().parse(text);
  return {
    parsed: Boolean(document),
    version: document ? document.version() : null,
    operations: document ? document.operations().all().map((op) => op.id()) : [],
    messages: document ? document.components().messages().all().map((m) => m.id()) : [],
    diagnostics: diagnostics.map((d) => ({
      severity: SEVERITY[d.severity] || String(d.severity),
      code: d.code,
      message: d.message,
      path: d.path.join("."),
    })),
  };
}

module.exports = { loadSchemas, parseAsyncApi, strictAjv };

if (require.main === module) {
  (async () => {
    const docsDir = process.argv[2] || path.join(__dirname, "..", "..", "docs");
    const { validators, errors } = loadSchemas(docsDir);
    const asyncapi = await parseAsyncApi(docsDir);
    const ok = errors.length === 0 && asyncapi.parsed && asyncapi.diagnostics.length === 0;
    const report = { ok, compiled: Object.keys(validators), errors, asyncapi };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    process.exit(ok ? 0 : 1);
  })().catch((err) => {
    process.stdout.write(`${JSON.stringify({ ok: false, fatal: String(err.stack || err) })}\n`);
    process.exit(2);
  });
}
