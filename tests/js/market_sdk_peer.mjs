// The official iExec SDK (9.0.1) reads and writes the market stand-in as it would the real market API.
// Env: SDK, RPC, HUB, MARKET, APP_OWNER_KEY, REQUESTER_KEY, APP_OWNER, POOL_OWNER, REQUESTER, APP_HASH,
// UNKNOWN_HASH, TEE_REQUEST (a signed request order as JSON). Prints one JSON line.
const env = process.env;
const { IExec, utils } = await import(env.SDK);
const connect = (key) => new IExec({ ethProvider: utils.getSignerFromPrivateKey(env.RPC, key) },
  { hubAddress: env.HUB, iexecGatewayURL: env.MARKET });
const appOwner = connect(env.APP_OWNER_KEY);
const requester = connect(env.REQUESTER_KEY);
const out = {};
const attempt = async (fn) => {
  try {
    return { ok: await fn() };
  } catch (e) {
    return { error: e.message };
  }
};
const apps = await requester.orderbook.fetchAppOrderbook({ appOwner: env.APP_OWNER });
out.appsByOwner = { count: apps.count, apps: apps.orders.map((o) => o.order.app), signers: apps.orders.map((o) => o.signer) };
const pools = await requester.orderbook.fetchWorkerpoolOrderbook({ workerpoolOwner: env.POOL_OWNER });
out.poolsByOwner = { count: pools.count, pools: pools.orders.map((o) => o.order.workerpool) };
const deals = await requester.deal.fetchRequesterDeals(env.REQUESTER);
out.requesterDeals = { count: deals.count, deals: deals.deals.map((d) => ({ dealid: d.dealid, appHash: d.appHash,
  requestHash: d.requestHash, app: d.app.pointer, appOwner: d.app.owner, volume: d.volume, requester: d.requester })) };
const byApp = await requester.deal.fetchDealsByApporder(env.APP_HASH);
out.dealsByApporder = { count: byApp.count, dealids: byApp.deals.map((d) => d.dealid) };
out.unpublishUnknown = await attempt(() => appOwner.order.unpublishApporder(env.UNKNOWN_HASH));
out.publishTee = await attempt(() => requester.order.publishRequestorder(JSON.parse(env.TEE_REQUEST),
  { preflightCheck: false }));
console.log(JSON.stringify(out));
