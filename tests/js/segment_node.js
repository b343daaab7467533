// @segment/analytics-node, with its host pointed at the relay.
// Usage: node segment_node.js RELAY_URL WRITE_KEY   (tests/test_node_sdks.py)
const { Analytics } = require('@segment/analytics-node');

const [host, writeKey] = process.argv.slice(2);

async function main() {
  const analytics = new Analytics({ writeKey, host, path: '/segment/v1/batch', maxRetries: 2 });
  const errors = [];
  analytics.on('error', (error) => errors.push(String(error.reason ?? error)));
  const ids = { userId: 'u-seg-node', anonymousId: 'anon-node' };
  analytics.track({
    ...ids,
    event: 'Order Completed',
    properties: { revenue: 42.5, sku: 'C3', coupon: null },
    context: { ip: '203.0.113.20' },
    timestamp: new Date('2026-01-02T03:04:05.678Z'),
  });
  analytics.page({ ...ids, name: 'Pricing', category: 'Docs' });
  analytics.identify({ ...ids, traits: { plan: 'pro' } });
  await analytics.closeAndFlush({ timeout: 10000 });
  if (errors.length) {
    throw new Error(errors.join('; '));
  }
  console.log(JSON.stringify({ ok: true }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
