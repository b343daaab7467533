// @statsig/statsig-node-core (the Rust-based server core), events to the relay's log_event,
// configs from a loopback fake. Usage: node statsig_node_core.js LOG_EVENT_URL SPECS_URL KEY
const { Statsig, StatsigUser } = require('@statsig/statsig-node-core');

const [logEventUrl, specsUrl, key] = process.argv.slice(2);

async function main() {
  const statsig = new Statsig(key, {
    logEventUrl,
    specsUrl,
    disableCountryLookup: true,
    enableIdLists: false,
    outputLogLevel: 'error',
    initTimeoutMs: 5000,
  });
  await statsig.initialize();
  const user = new StatsigUser({ userID: 'u-core', email: 'c@example.com', customIDs: { stableID: 'st-core' } });
  const gate = statsig.checkGate(user, 'new_checkout');
  statsig.logEvent(user, 'purchase', 30, { sku: 'B2', qty: '3' });
  await statsig.shutdown();
  console.log(JSON.stringify({ gate }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
