// Re-exported from lab/ (the daemon launcher shared with the demo and the
// benchmarks): startDaemon, REPO_ROOT, CLI_MAIN and their types.
export * from '../../lab/daemon.js';
