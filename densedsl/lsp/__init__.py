"""The densedsl language server (`densedsl lsp`): diagnostics as you type, hovers with the
figures of each statement, inlay hints, completion, formatting, symbols, definitions,
references, rename and did-you-mean fixes, for any LSP client. Needs the `lsp` extra (pygls).

`document` analyses a buffer (no pygls), `features` turns a snapshot into LSP answers, `server`
wires them to pygls. None of them imports torch.
"""
