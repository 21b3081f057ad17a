// Compiles the contracts with the pinned solc (package.json) through its standard-JSON API and
// writes one artifact per contract into artifacts/ (ABI, bytecode, compiler settings).
//   node build.js          writes the artifacts
//   node build.js --check  fails if the committed artifacts differ from what the source compiles to
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const SOURCES = ['src/SpherePayments.sol', 'test/ReentrantProvider.sol'];
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

function findImports(importPath) {
  const candidates = [path.join(__dirname, importPath), path.join(__dirname, 'node_modules', importPath)];
  for (const candidate of candidates) {
    if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, 'utf8') };
  }
  return { error: `not found: ${importPath}` };
}

function compile() {
  const input = {
    language: 'Solidity',
    sources: Object.fromEntries(SOURCES.map((source) => [source, { content: fs.readFileSync(path.join(__dirname, source), 'utf8') }])),
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((error) => error.severity === 'error');
  for (const diagnostic of output.errors || []) console.error(diagnostic.formattedMessage);
  if (errors.length > 0) process.exit(1);
  const artifacts = {};
  for (const source of SOURCES) {
    for (const [name, contract] of Object.entries(output.contracts[source])) {
      artifacts[`${name}.json`] = JSON.stringify(
        {
          contractName: name,
          sourceName: source,
          compiler: { version: solc.version(), settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion } },
          abi: contract.abi,
          bytecode: `0x${contract.evm.bytecode.object}`,
          deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
        },
        null,
        2,
      ) + '\n';
    }
  }
  return artifacts;
}

const artifacts = compile();
const directory = path.join(__dirname, 'artifacts');
if (process.argv.includes('--check')) {
  let stale = false;
  for (const [file, content] of Object.entries(artifacts)) {
    const committed = path.join(directory, file);
    if (!fs.existsSync(committed) || fs.readFileSync(committed, 'utf8') !== content) {
      console.error(`contracts/artifacts/${file} is stale: run (cd contracts && npm ci && node build.js) and commit it`);
      stale = true;
    }
  }
  if (stale) process.exit(1);
  console.log(`artifacts match the source (${Object.keys(artifacts).join(', ')}, solc ${solc.version()})`);
} else {
  fs.mkdirSync(directory, { recursive: true });
  for (const [file, content] of Object.entries(artifacts)) fs.writeFileSync(path.join(directory, file), content);
  console.log(`wrote ${Object.keys(artifacts).join(', ')}`);
}
