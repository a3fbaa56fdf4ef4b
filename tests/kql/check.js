// Parses and semantically checks KQL texts with Microsoft's Kusto language service
// (npm @kusto/language-service-next). Reads {"databases": {name: {table: "(col:type, ...)"}}, "queries":
// [{"name", "database", "text"}]} on stdin; writes [{"name", "diagnostics": [{severity, code, message, start,
// length}]}] on stdout. Only the parser and the semantic analysis run: no query is executed.
'use strict';
const path = require('path');

const root = path.resolve(__dirname, '..', '..', 'node_modules', '@kusto', 'language-service-next');
require(path.join(root, 'bridge.min.js'));
require(path.join(root, 'Kusto.Language.Bridge.min.js'));
const K = global.Kusto.Language;
const S = K.Symbols;

function globalsFor(tables) {
  const symbols = Object.entries(tables).map(([name, schema]) => {
    const table = S.TableSymbol.From(schema).WithName(name);
    // From() stops quietly at a column named like a keyword (kind, plan): quote those as ['kind'].
    const declared = (schema.match(/:/g) || []).length;
    if (table.Columns.Count !== declared) throw new Error(`schema of ${name}: ${table.Columns.Count} of ${declared} columns parsed`);
    return table;
  });
  return K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol('db', symbols));
}

function diagnostics(text, globals) {
  const found = K.KustoCode.ParseAndAnalyze(text, globals).GetDiagnostics();
  const out = [];
  for (let i = 0; i < found.Count; i++) {
    const d = found.getItem(i);
    out.push({ severity: d.Severity, code: d.Code, message: d.Message, start: d.Start, length: d.Length });
  }
  return out;
}

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const request = JSON.parse(input);
  const globals = {};
  for (const [name, tables] of Object.entries(request.databases)) globals[name] = globalsFor(tables);
  const results = request.queries.map((q) => {
    if (!(q.database in globals)) throw new Error(`query ${q.name}: no database ${q.database}`);
    return { name: q.name, diagnostics: diagnostics(q.text, globals[q.database]) };
  });
  process.stdout.write(JSON.stringify(results));
});
