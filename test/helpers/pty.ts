// Re-exported from src/lab, shared with the demo and the benchmarks.
export * from '../../src/lab/pty.js';
