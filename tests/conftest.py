import os
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tests compare with sparsify on the CPU, where its Triton decoder (chosen at import wherever
# triton is installed, as on GPU machines) cannot run
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
# what the workbench computes on the read-only bundled demo goes to the user's cache: in tests, a
# throw-away one
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="biollm-test-cache-")

import pytest  # noqa: E402

from tiny_models import ARCHS, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """Folders holding a tiny saved model of each architecture, made once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = make_tiny_model(arch, root / arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def pbmc():
    """scanpy's pbmc68k_reduced: 700 real PBMC cells, 765 genes, `bulk_labels`, UMAP."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


@pytest.fixture(scope="session")
def pbmc_h5ad(pbmc, tmp_path_factory):
    path = tmp_path_factory.mktemp("pbmc") / "pbmc68k_reduced.h5ad"
    pbmc.write_h5ad(path)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny matmuls run faster on one torch thread: a second one only adds synchronisation."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def collect_qt_garbage_on_the_main_thread(request):
    """Qt objects a GUI test leaves in reference cycles are collected here, on the main thread.
    Left to the cyclic GC, they may be destroyed inside a worker thread that happens to trigger a
    collection: the QObject destructor there waits for the GIL while holding a Qt lock that the
    main thread, holding the GIL, waits for (seen as a hang in the UMAP worker test)."""
    yield
    if "qapp" in request.fixturenames:
        import gc

        gc.collect()
