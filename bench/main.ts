// `npm run bench [-- --quick]`: the paths compared (run.ts), then what the
// per-app isolation costs (isolation.ts), then the goals checked against both
// (goals.ts). All read --quick from argv.
await import('./run.js');
await import('./isolation.js');
await import('./goals.js');
