"""DetailFlow Space: pick a class and watch the image sharpen, token group by token group.

    python spaces_demo/app.py                      # serves on $GRADIO_SERVER_PORT (default 7860)

The model comes from `DETAILFLOW_MODEL`: a pipeline folder or Hub repo id, or
`original:TOKENIZER_REPO,GENERATOR_REPO` to convert a release on the fly (e.g.
`original:ByteFlow-AI/DetailFlow-16,ByteFlow-AI/DetailFlow-16-GPT-L` on a GPU Space). Without it,
the tiny model embedded in `detailflow_hf` runs on CPU.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading

import gradio as gr
import torch

from detailflow_hf import DEFAULT_MODEL, DetailFlowPipeline
from detailflow_hf.image_processing import upscale

DISPLAY_SIZE = 256
CONCURRENCY = int(os.environ.get("DETAILFLOW_CONCURRENCY", "2"))


def load_pipeline(spec: str | None = None) -> DetailFlowPipeline:
    """The pipeline named by `spec` (see the module docstring), on GPU in bfloat16 when there is one."""
    spec = spec or os.environ.get("DETAILFLOW_MODEL") or DEFAULT_MODEL
    if spec is None:
        raise SystemExit("set DETAILFLOW_MODEL to a DetailFlow pipeline folder or Hub repo id.")
    if spec.startswith("original:"):
        tokenizer, generator = spec.removeprefix("original:").split(",")
        pipe = DetailFlowPipeline.from_original(tokenizer.strip(), generator.strip())
    else:
        pipe = DetailFlowPipeline.from_pretrained(spec)
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

    def detail_choices(self) -> list[tuple[str, int]]:
        schedule = self.pipe.vqvae.schedule
        return [(f"{k} tokens ({schedule.decoder_resolution(k)} px)", k) for k in self.steps]

    def class_choices(self) -> list[str]:
        names = self.pipe.labels.names()
        return names or [str(i) for i in range(self.pipe.transformer.config.num_classes)]

    def _arguments(self, class_label, guidance_scale, seed, num_tokens) -> dict:
        try:
            class_id = self.pipe.get_label_ids(str(class_label).strip())[0]
            num_tokens = int(num_tokens) if num_tokens not in (None, "") else self.steps[-1]
            seed = int(seed)
            guidance_scale = float(guidance_scale) if guidance_scale not in (None, "") else None  # None: the model's
            self.pipe.check_inputs([class_id], num_tokens, 1, None, "pil", None, guidance_scale=guidance_scale)
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error)) from error
        generator = torch.Generator(self.pipe.transformer.device).manual_seed(seed)
        return dict(class_labels=[class_id], guidance_scale=guidance_scale, num_tokens=num_tokens, generator=generator)

    def generate(self, class_label, guidance_scale, seed, num_tokens):
        """API: the final image only."""
        arguments = self._arguments(class_label, guidance_scale, seed, num_tokens)
        try:
            image = self.pipe(**arguments).images[0]
        except (ValueError, TypeError) as error:  # the pipeline's own message, not a generic "Error"
            raise gr.Error(str(error)) from error
        return upscale(image, DISPLAY_SIZE)

    def generate_progressive(self, class_label, guidance_scale, seed, num_tokens):
        """UI: yields (current image, gallery so far) after every decoding step, coarse to fine."""
        arguments = self._arguments(class_label, guidance_scale, seed, num_tokens)
        previews: queue.Queue = queue.Queue()

        def on_step(pipe, step, k, callback_kwargs):
            previews.put(callback_kwargs["tokens"].clone())

        def run():
            try:
                self.pipe(**arguments, callback_on_step_end=on_step, output_type="pt")
            except Exception as error:  # surfaced to the user below
                previews.put(error)
            previews.put(None)

        threading.Thread(target=run, daemon=True).start()
        gallery = []
        # Frames go out as files written once: re-sending PIL images makes gradio rewrite a cached
        # file while the browser may still be reading it.
        with tempfile.TemporaryDirectory(prefix="detailflow-demo-") as frames:
            while (tokens := previews.get()) is not None:
                if isinstance(tokens, Exception):
                    raise gr.Error(str(tokens))
                path = os.path.join(frames, f"{tokens.shape[1]:04d}.png")
                upscale(self.pipe.decode(tokens, output_type="pil")[0], DISPLAY_SIZE).save(path)
                gallery.append((path, f"{tokens.shape[1]} tokens"))
                yield path, gallery


def build_demo(pipe: DetailFlowPipeline | None = None) -> gr.Blocks:
    demo_state = Demo(pipe or load_pipeline())
    with gr.Blocks(title="DetailFlow: coarse-to-fine image generation") as demo:
        gr.Markdown(
            "# DetailFlow\nNext-detail prediction ([arXiv 2505.21473](https://arxiv.org/abs/2505.21473)): the first tokens "
            "give the global layout at a low resolution, each further group adds detail."
        )
        with gr.Row():
            with gr.Column():
                class_label = gr.Dropdown(
                    demo_state.class_choices(), value=demo_state.class_choices()[0], label="Class",
                    filterable=True, allow_custom_value=True, elem_id="class-label",
                )
                model_guidance = demo_state.pipe.sampling_params().guidance_scale  # the slider starts at the model's
                guidance = gr.Slider(1.0, max(5.0, model_guidance), value=model_guidance, step=0.01, label="Guidance scale")
                seed = gr.Number(value=0, precision=0, label="Seed")
                detail = gr.Dropdown(demo_state.detail_choices(), value=demo_state.steps[-1], label="Detail level")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", elem_id="result", format="png")
                gallery = gr.Gallery(label="Coarse to fine", columns=6, height="auto", elem_id="gallery")
        inputs = [class_label, guidance, seed, detail]
        button.click(demo_state.generate_progressive, inputs, [image, gallery], api_name="generate_progressive")
        api_button = gr.Button(visible=False)
        api_button.click(demo_state.generate, inputs, image, api_name="generate")
    return demo.queue(max_size=64, default_concurrency_limit=CONCURRENCY)


def server_name() -> str:
    """Loopback unless configured: Spaces set GRADIO_SERVER_NAME=0.0.0.0 themselves."""
    return os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")


if __name__ == "__main__":
    build_demo().launch(server_name=server_name())
