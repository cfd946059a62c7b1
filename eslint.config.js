// ESLint flat config (`npm run lint`): ESLint's and typescript-eslint's
// recommended rules, without type information so it stays fast (tsc does
// the type checking: `npm run typecheck`).
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

// A leading underscore marks what is unused on purpose (a callback's fixed
// parameters, the fields a destructuring copy leaves out).
const unusedVars = { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', ignoreRestSiblings: true };

export default defineConfig(
  { ignores: ['dist/', 'node_modules/', 'native/build/', '.tmp/'] },
  {
    files: ['**/*.ts', '**/*.mjs', '**/*.js'],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'module',
      globals: globals.node,
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', unusedVars],
    },
  },
);
