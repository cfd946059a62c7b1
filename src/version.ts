// The package version, reported in the handshake.
export const VERSION = '0.1.0';
