"""DetailFlow Space: pick a class and watch the image sharpen, token group by token group; or start
from an image, keep its coarse tokens and watch the detail regrow.

    python spaces_demo/app.py                      # serves on $GRADIO_SERVER_PORT (default 7860)

The model comes from `DETAILFLOW_MODEL`, else from `space_config.json` beside this file (written by
`detailflow-hf space`): a pipeline folder or Hub repo id, or `original:TOKENIZER_REPO,GENERATOR_REPO`
to convert a release on the fly (e.g. `original:ByteFlow-AI/DetailFlow-16,ByteFlow-AI/DetailFlow-16-GPT-L`
on a GPU Space). Without either, the tiny model embedded in `detailflow_hf` runs on CPU. On ZeroGPU
hardware (the `spaces` package present) every generation runs under `spaces.GPU`.
"""

from __future__ import annotations

try:  # ZeroGPU Spaces provide `spaces`, which must be imported before torch; elsewhere it is absent
    import spaces
except ImportError:
    spaces = None

import json
import os
import queue
import tempfile
import threading
from pathlib import Path

import gradio as gr
import torch

import detailflow_hf.loading
from detailflow_hf import DetailFlowPipeline
from detailflow_hf.flags import MAX_SEED
from detailflow_hf.pipelines.image_processing import open_image, upscale

HERE = Path(__file__).resolve().parent
DISPLAY_SIZE = 256
CONCURRENCY = int(os.environ.get("DETAILFLOW_CONCURRENCY", "2"))


def on_gpu(handler):
    """`handler` under `spaces.GPU` on ZeroGPU hardware (a GPU is attached for each call), else as is."""
    return spaces.GPU(handler) if spaces is not None else handler


def configured_model() -> str | None:
    """`DETAILFLOW_MODEL`, else the model `space_config.json` names (a folder in it is relative to this file)."""
    if os.environ.get("DETAILFLOW_MODEL"):
        return os.environ["DETAILFLOW_MODEL"]
    config = HERE / "space_config.json"
    model = json.loads(config.read_text()).get("model") if config.is_file() else None
    if model and (HERE / model).is_dir():
        return str(HERE / model)
    return model


def load_pipeline(spec: str | None = None) -> DetailFlowPipeline:
    """The pipeline named by `spec` or `configured_model()` (see the module docstring; none: the embedded
    model), on GPU in bfloat16 when there is one."""
    pipe = detailflow_hf.loading.load_pipeline(spec or configured_model())
    if torch.cuda.is_available():
        pipe.to("cuda")
        pipe.transformer.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Demo:
    """The event handlers, bound to one pipeline."""

    def __init__(self, pipe: DetailFlowPipeline):
        self.pipe = pipe
        self.steps = pipe.prefix_lengths()
        self.keep_choices = [0, *self.steps]  # the "keep" slider moves over these
        # by default keep the first half of the tokens: the layout stays, the detail is regrown
        self.default_keep_index = max(i for i, k in enumerate(self.keep_choices) if k <= self.steps[-1] // 2)

    def _resolution(self, k: int) -> int:
        return self.pipe.vqvae.schedule.decoder_resolution(k) if k else 0

    def detail_choices(self) -> list[tuple[str, int]]:
        return [(f"{k} tokens ({self._resolution(k)} px)", k) for k in self.steps]

    def keep_label(self, index) -> str:
        k = self.keep_choices[int(index)]
        return f"keeps **{k} tokens** ({self._resolution(k)} px)" if k else "keeps nothing (plain generation)"

    def class_choices(self) -> list[str]:
        names = self.pipe.labels.names()
        return names or [str(i) for i in range(self.pipe.transformer.config.num_classes)]

    def _arguments(
        self, class_label, guidance_scale, seed, num_tokens=None, image=None, keep_tokens=None, num_candidates=1
    ) -> dict:
        """Checked pipeline arguments; every mistake becomes a `gr.Error` with the pipeline's own message."""
        try:
            class_id = self.pipe.get_label_ids(str(class_label).strip())[0]
            num_tokens = int(num_tokens) if num_tokens not in (None, "") else self.steps[-1]
            seed = int(seed)
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed={seed} is out of range; expected a seed in [0, {MAX_SEED}].")
            guidance_scale = float(guidance_scale) if guidance_scale not in (None, "") else None  # None: the model's
            self.pipe.check_inputs([class_id], num_tokens, 1, None, "pil", None, guidance_scale=guidance_scale)
            arguments = dict(class_labels=[class_id], guidance_scale=guidance_scale, num_tokens=num_tokens)
            if image is not None or keep_tokens is not None:
                if image is None:
                    raise ValueError("give an image to start from.")
                image = open_image(image)  # a file path from the upload box or the API
                keep_tokens = int(keep_tokens) if keep_tokens not in (None, "") else None
                num_candidates = int(num_candidates) if num_candidates not in (None, "") else 1
                arguments.update(image=image, keep_tokens=keep_tokens, num_candidates=num_candidates)
        except (ValueError, TypeError, OSError) as error:
            raise gr.Error(str(error)) from error
        arguments["generator"] = torch.Generator(self.pipe.transformer.device).manual_seed(seed)
        return arguments

    def _final(self, arguments) -> str:
        try:
            image = self.pipe(**arguments).images[0]
        except (ValueError, TypeError) as error:  # the pipeline's own message, not a generic "Error"
            raise gr.Error(str(error)) from error
        return upscale(image, DISPLAY_SIZE)

    def _stream(self, arguments):
        """Yields (current image, gallery so far) after every decoding step, coarse to fine."""
        previews: queue.Queue = queue.Queue()

        def on_step(pipe, step, k, callback_kwargs):
            previews.put(callback_kwargs["tokens"].clone())

        def run():
            try:
                self.pipe(**arguments, callback_on_step_end=on_step, output_type="pt")
            except Exception as error:  # surfaced to the user below
                previews.put(error)
            previews.put(None)

        gallery = []
        # Frames go out as files written once: re-sending PIL images makes gradio rewrite a cached
        # file while the browser may still be reading it.
        with tempfile.TemporaryDirectory(prefix="detailflow-demo-") as frames:

            def frame(tokens: torch.LongTensor) -> str:
                path = os.path.join(frames, f"{tokens.shape[1]:04d}.png")
                upscale(self.pipe.decode(tokens, output_type="pil")[0], DISPLAY_SIZE).save(path)
                gallery.append((path, f"{tokens.shape[1]} tokens"))
                return path

            if arguments.get("image") is not None:  # the image's kept coarse version comes first
                prefix = self.pipe.encode_prefix(arguments["image"], arguments.get("keep_tokens"))
                if prefix.shape[1]:
                    yield frame(prefix), gallery
            threading.Thread(target=run, daemon=True).start()
            while (tokens := previews.get()) is not None:
                if isinstance(tokens, Exception):
                    raise gr.Error(str(tokens))
                yield frame(tokens), gallery

    def generate(self, class_label, guidance_scale, seed, num_tokens):
        """API: the final image only."""
        return self._final(self._arguments(class_label, guidance_scale, seed, num_tokens))

    def generate_progressive(self, class_label, guidance_scale, seed, num_tokens):
        """UI: the image after every decoding step."""
        yield from self._stream(self._arguments(class_label, guidance_scale, seed, num_tokens))

    def vary(self, image, keep_tokens, class_label, guidance_scale, seed, num_candidates=1):
        """API: keep the first `keep_tokens` tokens of `image` (None: what its resolution shows), regrow the rest
        (`num_candidates` continuations per step, mixed into the one nearest the input)."""
        return self._final(
            self._arguments(
                class_label, guidance_scale, seed, image=image, keep_tokens=keep_tokens, num_candidates=num_candidates
            )  # fmt: skip
        )

    def vary_progressive(self, image, keep_index, class_label, guidance_scale, seed, num_candidates=1):
        """UI: the kept coarse image, then every step of the regrown detail."""
        keep_tokens = self.keep_choices[int(keep_index)]
        yield from self._stream(
            self._arguments(
                class_label, guidance_scale, seed, image=image, keep_tokens=keep_tokens, num_candidates=num_candidates
            )  # fmt: skip
        )


EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*.png"))


def _class_guidance_seed(demo_state: Demo):
    """The inputs both tabs share; the guidance slider starts at the model's own value."""
    classes = demo_state.class_choices()
    model_guidance = demo_state.pipe.sampling_params().guidance_scale
    label = gr.Dropdown(classes, value=classes[0], label="Class", filterable=True, allow_custom_value=True)
    guidance = gr.Slider(1.0, max(5.0, model_guidance), value=model_guidance, step=0.01, label="Guidance scale")
    return label, guidance, gr.Number(value=0, precision=0, label="Seed")


def _generate_tab(demo_state: Demo):
    with gr.Row():
        with gr.Column():
            class_label, guidance, seed = _class_guidance_seed(demo_state)
            class_label.elem_id = "class-label"
            detail = gr.Dropdown(demo_state.detail_choices(), value=demo_state.steps[-1], label="Detail level")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column():
            image = gr.Image(label="Image", type="filepath", elem_id="result", format="png")
            gallery = gr.Gallery(label="Coarse to fine", columns=6, height="auto", elem_id="gallery")
    inputs = [class_label, guidance, seed, detail]
    button.click(on_gpu(demo_state.generate_progressive), inputs, [image, gallery], api_name="generate_progressive")
    gr.Button(visible=False).click(on_gpu(demo_state.generate), inputs, image, api_name="generate")


def _vary_tab(demo_state: Demo):
    gr.Markdown(
        "Keep the first tokens of an image (its coarse structure, at the resolution they decode to) and let "
        "the model regrow the detail: under the image's own class for variations, under another for class "
        "transfer. A small image keeps all it shows and gets its detail completed."
    )
    with gr.Row():
        with gr.Column():
            source = gr.Image(label="Start from", type="filepath", elem_id="vary-input")
            if EXAMPLES:
                gr.Examples(EXAMPLES, inputs=source)
            default = demo_state.default_keep_index
            last = len(demo_state.keep_choices) - 1
            keep = gr.Slider(
                0, last, value=default, step=1, label="How much to keep (decoding steps)", elem_id="vary-keep"
            )
            keep_info = gr.Markdown(demo_state.keep_label(default))
            keep.change(demo_state.keep_label, keep, keep_info, api_name=False)
            class_label, guidance, seed = _class_guidance_seed(demo_state)
            candidates = gr.Slider(
                1, 32, value=1, step=1, label="Candidates per step (more keeps closer to the input, slower)",
                elem_id="vary-candidates",
            )  # fmt: skip
            button = gr.Button("Regrow the detail", variant="primary", elem_id="vary")
        with gr.Column():
            image = gr.Image(label="Image", type="filepath", elem_id="vary-result", format="png")
            gallery = gr.Gallery(label="Kept, then coarse to fine", columns=6, height="auto", elem_id="vary-gallery")
    inputs = [source, keep, class_label, guidance, seed, candidates]
    button.click(on_gpu(demo_state.vary_progressive), inputs, [image, gallery], api_name="vary_progressive")
    keep_tokens = gr.Number(visible=False, precision=0)  # the API takes a token count, not a slider position
    api_inputs = [source, keep_tokens, class_label, guidance, seed, candidates]
    gr.Button(visible=False).click(on_gpu(demo_state.vary), api_inputs, image, api_name="vary")


def build_demo(pipe: DetailFlowPipeline | None = None) -> gr.Blocks:
    demo_state = Demo(pipe or load_pipeline())
    with gr.Blocks(title="DetailFlow: coarse-to-fine image generation") as demo:
        gr.Markdown(
            "# DetailFlow\nNext-detail prediction ([arXiv 2505.21473](https://arxiv.org/abs/2505.21473)): "
            "the first tokens give the global layout at a low resolution, each further group adds detail."
        )
        with gr.Tab("Generate"):
            _generate_tab(demo_state)
        with gr.Tab("From an image"):
            _vary_tab(demo_state)
    return demo.queue(max_size=64, default_concurrency_limit=CONCURRENCY)


def server_name() -> str:
    """Loopback unless configured: Spaces set GRADIO_SERVER_NAME=0.0.0.0 themselves."""
    return os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")


if __name__ == "__main__":
    build_demo().launch(server_name=server_name())
