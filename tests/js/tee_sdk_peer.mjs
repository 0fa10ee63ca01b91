// The official iExec SDK (9.0.1) as the peer of iexec/tee.py and iexec/sms.py.
// MODE=sms    env SDK, RPC, KEY, HUB, SMS, NAME, VALUE, PEM, PEM2: the SDK pushes a requester secret and the
//             result encryption key (create, then forceUpdate) to SMS (the test's recorder).
// MODE=crypto env SDK, DIR: dataset.encrypt of DIR/data.bin with DIR/key.b64 -> DIR/sdk_dataset.enc;
//             AES-256-CBC decrypt (node:crypto) of DIR/ours.enc -> DIR/ours.dec; utils.decryptResult of
//             DIR/result.zip with DIR/private.pem -> DIR/sdk_result.zip, and with DIR/wrong.pem (error text);
//             of DIR/legacy.zip (the legacy AES-128-ECB form) -> DIR/sdk_legacy.zip;
//             an RSA key pair made as `iexec result generate-encryption-keypair` does -> DIR/cli.pub.
// Prints one JSON line.
import { generateKeyPairSync, createDecipheriv } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';

const env = process.env;
const { IExec, utils } = await import(env.SDK);
const out = {};

if (env.MODE === 'sms') {
  const ethProvider = utils.getSignerFromPrivateKey(env.RPC, env.KEY);
  const iexec = new IExec({ ethProvider }, { hubAddress: env.HUB, smsURL: env.SMS });
  const me = await iexec.wallet.getAddress();
  out.address = me;
  out.requesterPush = await iexec.secrets.pushRequesterSecret(env.NAME, env.VALUE);
  out.requesterExists = await iexec.secrets.checkRequesterSecretExists(me, env.NAME);
  out.keyPush = await iexec.result.pushResultEncryptionKey(env.PEM);
  out.keyUpdate = await iexec.result.pushResultEncryptionKey(env.PEM2, { forceUpdate: true });
} else if (env.MODE === 'crypto') {
  // IExecDatasetModule.encrypt is this function (lib/IExecDatasetModule.js): call it without a chain.
  const sdkRoot = dirname(dirname(env.SDK));
  const { encryptAes256Cbc } = await import(join(sdkRoot, 'common/utils/encryption-utils.js'));
  const dir = env.DIR;
  const key = readFileSync(join(dir, 'key.b64'), 'utf8');
  writeFileSync(join(dir, 'sdk_dataset.enc'), await encryptAes256Cbc(readFileSync(join(dir, 'data.bin')), key));
  const ours = readFileSync(join(dir, 'ours.enc'));
  const decipher = createDecipheriv('aes-256-cbc', Buffer.from(key, 'base64'), ours.subarray(0, 16));
  writeFileSync(join(dir, 'ours.dec'), Buffer.concat([decipher.update(ours.subarray(16)), decipher.final()]));
  const result = readFileSync(join(dir, 'result.zip'));
  writeFileSync(join(dir, 'sdk_result.zip'),
    await utils.decryptResult(result, readFileSync(join(dir, 'private.pem'), 'utf8')));
  writeFileSync(join(dir, 'sdk_legacy.zip'),
    await utils.decryptResult(readFileSync(join(dir, 'legacy.zip')), readFileSync(join(dir, 'private.pem'), 'utf8')));
  try {
    await utils.decryptResult(result, readFileSync(join(dir, 'wrong.pem'), 'utf8'));
    out.wrongKey = 'accepted';
  } catch (e) {
    out.wrongKey = e.message;
  }
  const { publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 4096,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  writeFileSync(join(dir, 'cli.pub'), publicKey);
  out.done = true;
}
console.log(JSON.stringify(out));
process.exit(0);
