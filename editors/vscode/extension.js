// The densedsl extension: the TextMate grammar does the highlighting; everything else (errors
// as you type, hovers with each statement's figures, inlay hints, completion, formatting,
// symbols, rename, quick fixes) comes from `densedsl lsp`, started here over stdio.
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

async function activate(context) {
  const config = vscode.workspace.getConfiguration("densedsl");
  const serverOptions = {
    command: config.get("server.path", "densedsl"),
    args: ["lsp"],
    transport: TransportKind.stdio,
  };
  const clientOptions = {
    documentSelector: [{ language: "densedsl" }],
    initializationOptions: { inlayHints: config.get("inlayHints", true) },
    // sends the `densedsl` settings to the server whenever they change
    synchronize: { configurationSection: "densedsl" },
  };
  client = new LanguageClient("densedsl", "densedsl language server", serverOptions, clientOptions);
  context.subscriptions.push(client);
  try {
    await client.start();
  } catch (err) {
    vscode.window.showErrorMessage(
      `densedsl: could not start \`${serverOptions.command} lsp\` (${err.message}). ` +
        'Install the server with pip install "densedsl[lsp]", or set densedsl.server.path.');
  }
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
