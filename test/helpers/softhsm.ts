// Re-exported from lab/, shared with the demo and the benchmarks.
export * from '../../lab/softhsm.js';
