// statsig-node, pointed at the relay for events and at a loopback fake for its configs.
// Usage: node statsig_node.js RELAY_API CONFIG_API SERVER_KEY   (tests/test_node_sdks.py)
const statsig = require('statsig-node');

const [relayApi, configApi, key] = process.argv.slice(2);

async function main() {
  await statsig.initialize(key, {
    api: relayApi, // events go to {api}/log_event
    apiForDownloadConfigSpecs: configApi,
    apiForGetIdLists: configApi,
    initTimeoutMs: 5000,
    loggingIntervalMs: 60000,
  });
  const user = { userID: 'u-node', email: 'n@example.com', customIDs: { stableID: 'st-node' } };
  const gate = statsig.checkGateSync(user, 'new_checkout');
  statsig.logEvent(user, 'purchase', 30, { sku: 'B2', qty: '3' });
  await statsig.shutdownAsync();
  console.log(JSON.stringify({ gate }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
