// ESLint for the TypeScript (`npm run lint`, part of `npm test`): the
// recommended rules of eslint and typescript-eslint, and two choices.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'build/', 'node_modules/', '**/*.js', '**/*.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // grpc-js's dynamic clients and proto-loader's messages are untyped:
      // requests are checked field by field at the door (server/wire-args.ts)
      // rather than typed by assertion.
      '@typescript-eslint/no-explicit-any': 'off',
      // A leading underscore marks what is unused on purpose (a destructured
      // field left out, a callback's unused argument).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
    },
  },
);
