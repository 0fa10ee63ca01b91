// The SDK 9.0.1's request params check (createObjParams in common/execution/order-helper.js) on each case
// of CASES (JSON list of {params, tag}), twice: as createRequestorder runs it (casting: unknown keys are
// dropped) and as the preflight check of a request order runs it (checkRequestRequirements, noCast: true:
// unknown keys are refused).
// Env: SDK (path to dist/esm/lib/index.js), CASES. Prints one JSON line: a list of
// {ok, value | error, strictOk, strictError}.
import { join, dirname } from 'node:path';

const env = process.env;
const { createObjParams } = await import(
  join(dirname(dirname(env.SDK)), 'common/execution/order-helper.js'));
const out = [];
for (const { params, tag } of JSON.parse(env.CASES)) {
  const verdict = {};
  try {
    verdict.value = await createObjParams({ params, tag });
    verdict.ok = true;
  } catch (e) {
    verdict.ok = false;
    verdict.error = e.message;
  }
  try {
    await createObjParams({ params, tag, noCast: true });
    verdict.strictOk = true;
  } catch (e) {
    verdict.strictOk = false;
    verdict.strictError = e.message;
  }
  out.push(verdict);
}
console.log(JSON.stringify(out));
process.exit(0);
