// The official iExec SDK (9.0.1) pushes and checks secrets against the SMS stand-in.
// Env: SDK (path to dist/esm/lib/index.js), RPC, KEY, HUB, SMS, NAME, VALUE, PEM, PEM2.
// Prints one JSON line with what each SDK call answered.
const env = process.env;
const { IExec, utils } = await import(env.SDK);
const ethProvider = utils.getSignerFromPrivateKey(env.RPC, env.KEY);
const iexec = new IExec({ ethProvider }, { hubAddress: env.HUB, smsURL: env.SMS });
const me = await iexec.wallet.getAddress();
const out = {};
out.requesterBefore = await iexec.secrets.checkRequesterSecretExists(me, env.NAME);
out.requesterPush = await iexec.secrets.pushRequesterSecret(env.NAME, env.VALUE);
out.requesterAfter = await iexec.secrets.checkRequesterSecretExists(me, env.NAME);
try {
  await iexec.secrets.pushRequesterSecret(env.NAME, 'again');
  out.requesterAgain = 'accepted';
} catch (e) {
  out.requesterAgain = e.message;
}
out.keyBefore = await iexec.result.checkResultEncryptionKeyExists(me);
out.keyPush = await iexec.result.pushResultEncryptionKey(env.PEM);
out.keyAfter = await iexec.result.checkResultEncryptionKeyExists(me);
try {
  await iexec.result.pushResultEncryptionKey(env.PEM2);
  out.keyAgain = 'accepted';
} catch (e) {
  out.keyAgain = e.message;
}
out.keyUpdate = await iexec.result.pushResultEncryptionKey(env.PEM2, { forceUpdate: true });
console.log(JSON.stringify(out));
