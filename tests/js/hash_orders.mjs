// Hash fixed orders with the official iExec JS SDK (a test peer): reads {rpcUrl, hub, apporder,
// datasetorder?, workerpoolorder, requestorder} as JSON on stdin, prints {apporder: "0x..", ...} on stdout.
const sdk = new URL('../../devnet/node_modules/iexec/dist/esm/lib/index.js', import.meta.url);
const { IExec } = await import(sdk.href);

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const iexec = new IExec({ ethProvider: input.rpcUrl }, { hubAddress: input.hub, allowExperimentalNetworks: true });
const out = {};
if (input.apporder) out.apporder = await iexec.order.hashApporder(input.apporder);
if (input.datasetorder) out.datasetorder = await iexec.order.hashDatasetorder(input.datasetorder);
if (input.workerpoolorder) out.workerpoolorder = await iexec.order.hashWorkerpoolorder(input.workerpoolorder);
if (input.requestorder) out.requestorder = await iexec.order.hashRequestorder(input.requestorder);
process.stdout.write(JSON.stringify(out));
