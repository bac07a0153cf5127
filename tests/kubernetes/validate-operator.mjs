// Validates the Prometheus Operator resources (monitoring.coreos.com) of YAML or JSON
// streams against the Operator's schemas, strictly: a field the schema does not know is
// an error, as it is for `kubectl apply` (server-side field validation, strict by default)
// against the real CRDs.
//
//   kubectl kustomize deploy/kubernetes/base | node tests/kubernetes/validate-operator.mjs -
//   node tests/kubernetes/validate-operator.mjs FILE...
//
// The schemas come from @kubernetes-models/prometheus-operator 6.0.0 (pinned by
// package.json and package-lock.json beside this file, installed by
// scripts/install-kubernetes-peers.sh into target/peers/node). The package generates them
// from the Operator's Go API types (github.com/prometheus-operator/prometheus-operator,
// pkg/apis/monitoring), at Operator v0.91.0 for this version (the module version in the
// go.mod it is generated with); no package ships the CRD YAML itself.
//
// Those schemas allow properties they do not describe, so a misspelt field (say
// `keep_firing_fro`) would pass them. The strict check below watches which properties
// the compiled validator reads: an object it looked into without enumerating (a typed
// object, not a map such as labels) must have no property it never asked for.
//
// Prints one line per document (PASS, or FAIL with the reasons; other API groups are
// listed as "not an Operator resource") and exits 1 if any failed, 2 on unusable input.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.IAM_KEY_EXPORTER_NODE_PEERS ?? join(here, "../../target/peers/node");
const modules = join(nodeDir, "node_modules");

async function load(path) {
  try {
    return await import(pathToFileURL(join(modules, path)).href);
  } catch (err) {
    console.error(
      `cannot load ${path} from ${modules} (${err.message}): run scripts/install-kubernetes-peers.sh`,
    );
    process.exit(2);
  }
}

const YAML = await load("yaml/dist/index.js");
const v1 = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const v1alpha1 = await load(
  "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1/index.js",
);
const v1beta1 = await load(
  "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1beta1/index.js",
);
const models = {
  "monitoring.coreos.com/v1": v1,
  "monitoring.coreos.com/v1alpha1": v1alpha1,
  "monitoring.coreos.com/v1beta1": v1beta1,
};

// A deep copy of `value` whose objects report, in `seen`, which properties were read and
// whether they were enumerated.
function track(value, path, seen) {
  if (Array.isArray(value)) return value.map((item, i) => track(item, `${path}/${i}`, seen));
  if (value === null || typeof value !== "object") return value;
  const info = { path, keys: Object.keys(value), read: new Set(), enumerated: false };
  seen.push(info);
  const copy = {};
  for (const [key, item] of Object.entries(value)) copy[key] = track(item, `${path}/${key}`, seen);
  return new Proxy(copy, {
    get(target, key, receiver) {
      if (typeof key === "string") info.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === "string") info.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      info.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function validate(doc) {
  const group = models[doc.apiVersion];
  const model = group?.[doc.kind];
  if (typeof model?.prototype?.validate !== "function") {
    return [`no schema for ${doc.kind} in ${doc.apiVersion}`];
  }
  const seen = [];
  try {
    // The model's validate() checks `this`: here, the tracked copy of the document.
    model.prototype.validate.call(track(doc, "", seen));
  } catch (err) {
    return [err.message];
  }
  const problems = [];
  for (const info of seen) {
    if (info.enumerated) continue; // a map (labels, annotations): any key is allowed
    if (info.read.size === 0) {
      if (info.keys.length > 0) problems.push(`${info.path || "/"}: the schema does not describe this object`);
      continue;
    }
    for (const key of info.keys) {
      if (!info.read.has(key)) problems.push(`${info.path}/${key}: unknown field`);
    }
  }
  return problems;
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: validate-operator.mjs FILE... (- for standard input)");
  process.exit(2);
}
let failed = 0;
let validated = 0;
for (const file of files) {
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  for (const parsed of YAML.parseAllDocuments(text)) {
    if (parsed.errors.length > 0) {
      console.error(`${file}: not YAML: ${parsed.errors.map((e) => e.message).join("; ")}`);
      process.exit(2);
    }
    const doc = parsed.toJS();
    if (doc === null || doc === undefined) continue;
    const name = `${doc.kind}/${doc.metadata?.name}`;
    if (typeof doc.apiVersion !== "string" || !doc.apiVersion.startsWith("monitoring.coreos.com/")) {
      console.log(`${file}: ${name} (${doc.apiVersion}): not an Operator resource, not validated here`);
      continue;
    }
    validated++;
    const problems = validate(doc);
    if (problems.length === 0) {
      console.log(`${file}: PASS ${name} (${doc.apiVersion})`);
    } else {
      failed++;
      console.log(`${file}: FAIL ${name} (${doc.apiVersion}): ${problems.join("; ")}`);
    }
  }
}
console.log(`Operator resources: ${validated - failed} valid, ${failed} invalid`);
process.exit(failed > 0 ? 1 : 0);
