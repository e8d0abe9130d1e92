"""Where the demo workspace is and what it holds, as the build writes it and the run reads it."""

from __future__ import annotations

from pathlib import Path

from ..errors import BioLLMError
from ..fileio import read_json

DEFAULT_WORKSPACE = Path(__file__).resolve().parents[2] / "resources" / "demo"

# Sub-folders other builders own (the DNA demo): a rebuild of the cell demo carries them over.
OTHER_DEMOS = ("dna",)


def read_workspace(folder: str | Path) -> dict:
    """The files of a built demo workspace: model, cells, SAE, transcoders."""
    folder = Path(folder)
    ws = read_json(folder / "workspace.json", "demo workspace file")
    sae = [d for d in ws.get("dictionaries", []) if d.startswith("dictionaries/sae/")]
    if not sae or not (folder / "dictionaries" / "transcoders").is_dir():
        raise BioLLMError(f"{folder} has no SAE or transcoders; rebuild it with "
                          "`biollm demo build`.")
    try:
        return {"folder": folder, "model": folder / ws["model"], "data": folder / ws["data"][0],
                "sae": folder / sae[0], "transcoders": folder / "dictionaries" / "transcoders",
                "top_k": int(ws["settings"]["cell_sentence"]["top_k"])}
    except (KeyError, IndexError, TypeError, ValueError):
        raise BioLLMError(f"{folder / 'workspace.json'} does not describe a demo workspace (model, "
                          "data and cell-sentence settings); rebuild it with `biollm demo build`."
                          ) from None
