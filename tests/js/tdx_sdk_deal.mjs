// A TDX deal on the devnet, driven end to end by the official iExec SDK (9.0.1) as a requester would.
// Env: SDK (dist/esm/lib/index.js), KUBO (kubo-rpc-client's index.js), RPC, HUB, MARKET, SMS, GATEWAY,
// REQUESTER_KEY, APP_OWNER_KEY, APP, WORKERPOOL, PNG (path of the input picture), SECRET_NAME, OUT (where the
// decrypted iexec_out.zip goes), SKIP_KEY ("1": push no result key, expect the SDK to refuse the order).
// Prints one JSON line: deal, task, status, the secret's sha256, what each step answered.
import { readFile, writeFile } from 'node:fs/promises';
import { createHash, generateKeyPairSync } from 'node:crypto';

const env = process.env;
const { IExec, utils } = await import(env.SDK);
const { create } = await import(env.KUBO);
const options = {
  hubAddress: env.HUB, iexecGatewayURL: env.MARKET, smsURL: env.SMS,
  ipfsGatewayURL: env.GATEWAY, ipfsNodeURL: env.GATEWAY,
};
const requester = new IExec({ ethProvider: utils.getSignerFromPrivateKey(env.RPC, env.REQUESTER_KEY) }, options);
const appOwner = new IExec({ ethProvider: utils.getSignerFromPrivateKey(env.RPC, env.APP_OWNER_KEY) }, options);
const out = {};

// 1. the input: encrypted as a dataset is, uploaded to the devnet's IPFS upload node with kubo's client
const datasetKey = requester.dataset.generateEncryptionKey();
const encrypted = await requester.dataset.encrypt(await readFile(env.PNG), datasetKey);
const added = await create({ url: env.GATEWAY }).add(encrypted);
const inputUrl = `${env.GATEWAY}/ipfs/${added.cid.toString()}`;
out.inputCid = added.cid.toString();

// 2. the secrets: the dataset key as a requester secret, the result key as the beneficiary's web2 secret
out.secretPushed = await requester.secrets.pushRequesterSecret(env.SECRET_NAME, datasetKey);
out.secretSha256 = createHash('sha256').update(datasetKey).digest('hex');
const { publicKey, privateKey } = generateKeyPairSync('rsa', {
  modulusLength: 4096,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
if (env.SKIP_KEY !== '1') {
  out.keyPushed = await requester.result.pushResultEncryptionKey(publicKey);
}

// 3. the orders: a TDX app order by the app owner, the pool's order from the market, a TDX request
const apporder = await appOwner.order.signApporder(
  await appOwner.order.createApporder({ app: env.APP, appprice: '5000000', volume: '10', tag: ['tee', 'tdx'] }),
);
out.appOrderHash = await appOwner.order.publishApporder(apporder);
const book = await requester.orderbook.fetchWorkerpoolOrderbook({
  workerpool: env.WORKERPOOL, category: 0, minTag: ['tee', 'tdx'],
});
out.poolOrders = book.count;
const workerpoolorder = book.orders[0].order;
const requestorder = await requester.order.createRequestorder({
  app: env.APP, appmaxprice: '5000000', workerpoolmaxprice: '10000000', category: 0, volume: 1,
  tag: ['tee', 'tdx'],
  params: {
    iexec_input_files: [inputUrl],
    iexec_secrets: { 1: env.SECRET_NAME },
    iexec_result_encryption: true,
  },
});
let signedRequest;
try {
  signedRequest = await requester.order.signRequestorder(requestorder);
} catch (e) {
  out.signRefused = e.message;
  console.log(JSON.stringify(out));
  process.exit(0);
}

// 4. the deal: matched by the SDK, followed to the end, the result downloaded and decrypted
const { dealid } = await requester.order.matchOrders({ apporder, workerpoolorder, requestorder: signedRequest });
const deal = await requester.deal.show(dealid);
const taskid = deal.tasks['0'];
out.deal = dealid;
out.task = taskid;
out.dealTag = deal.tag;
const observable = await requester.task.obsTask(taskid, { dealid });
out.status = await new Promise((resolve, reject) => {
  observable.subscribe({
    next: ({ message }) => { if (message === 'TASK_COMPLETED' || message === 'TASK_FAILED') resolve(message); },
    error: reject,
    complete: () => resolve('complete'),
  });
});
const response = await requester.task.fetchResults(taskid);
const archive = Buffer.from(await response.arrayBuffer());
out.archiveBytes = archive.length;
const plain = await utils.decryptResult(archive, privateKey);
await writeFile(env.OUT, plain);
await writeFile(`${env.OUT}.encrypted`, archive);
out.plainBytes = plain.length;
console.log(JSON.stringify(out));
process.exit(0);
