// Re-exported from lab/: child processes killed when the test process exits.
export * from '../../lab/children.js';
