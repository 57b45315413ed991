"""Anchored SFT: the usual loss on the train rows plus a KL penalty that keeps the candidate's next-token
distributions equal to the champion's on *anchor* rows (replies the champion served and nobody faulted).

With LoRA the champion is the same network with the new adapter switched off, so the penalty costs one
extra forward without gradients and no second model. Cross-entropy on the champion's own replies would
sharpen its distribution toward them; the KL keeps the whole distribution, which is what protects the
weakly held answers a small model loses first.
"""

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from service.backends.local import greedy_replies


def anchor_kl(student_logits: torch.Tensor, champion_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over reply tokens of KL(champion ‖ student) for the next-token distributions."""
    mask = labels[:, 1:] != -100
    student = F.log_softmax(student_logits[:, :-1][mask].float(), dim=-1)
    champion = F.log_softmax(champion_logits[:, :-1][mask].float(), dim=-1)
    if student.numel() == 0:
        return student_logits.sum() * 0.0
    return F.kl_div(student, champion, log_target=True, reduction="batchmean")


def champion_replies(model, tokenizer, anchors: list[dict], max_new_tokens: int, batch_size: int = 16) -> list[dict]:
    """The anchors with their last reply replaced by the champion's own greedy reply (`model` before the new
    LoRA). The KL then holds the positions greedy decoding visits: the first tokens of a short answer decide
    whether "The capital of Kenya is Nairobi." still comes out, and a reply someone else wrote never visits
    them. 0 `max_new_tokens`: the anchors as they are."""
    if not anchors or max_new_tokens <= 0:
        return anchors
    replies = greedy_replies(model, tokenizer, [a["messages"][:-1] for a in anchors], max_new_tokens, batch_size)
    return [a | {"messages": a["messages"][:-1] + [{"role": "assistant", "content": reply}]}
            for a, reply in zip(anchors, replies)]  # an empty reply still holds where the champion stops


def pinned(anchors: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the other anchors, the golden ones): the gate's golden prompts are a hard rule (no regression at all),
    so one of them joins every step's anchor batch; drawn with the others, each was held once or twice a run
    and "What is the capital of France?" came out in French after a quick demo's training."""
    golden = [a for a in anchors if (a.get("lineage") or {}).get("origin") == "golden"]
    return [a for a in anchors if (a.get("lineage") or {}).get("origin") != "golden"], golden


def anchored(trainer_cls):
    """`trainer_cls` (an SFTTrainer) with `anchor_dataset`, `pinned_dataset` and `anchor_weight`: each training
    step adds `anchor_weight` × the KL on one batch of anchor rows, cycling through them, plus the next pinned
    row in turn."""

    class AnchoredSFTTrainer(trainer_cls):
        def __init__(self, *args, anchor_dataset=None, pinned_dataset=None, anchor_weight: float = 0.0, **kw):
            super().__init__(*args, **kw)
            self.anchor_weight = anchor_weight
            self._anchors: Iterator[list[dict]] | None = None
            self._pinned: Iterator[dict] | None = None
            if anchor_weight <= 0:
                return
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

            def prepare(dataset, name: str) -> list[dict]:
                if dataset is None or not len(dataset):
                    return []
                return list(self._prepare_dataset(dataset, self.processing_class, self.args, False, None, name)
                            .select_columns(["input_ids", "labels"]))

            rows, pins = prepare(anchor_dataset, "anchor"), prepare(pinned_dataset, "pinned anchor")
            self._collate = DataCollatorForLanguageModeling(pad_token_id=self.processing_class.pad_token_id)
            if rows:  # padded rows even where training packs (CUDA)
                self._anchors = itertools.cycle(torch.utils.data.DataLoader(
                    rows, batch_size=self.args.per_device_train_batch_size, shuffle=True, collate_fn=list,
                    generator=torch.Generator().manual_seed(self.args.seed)))
            if pins:
                self._pinned = itertools.cycle(pins)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if (self._anchors is None and self._pinned is None) or not model.training:
                return result
            rows = (next(self._anchors) if self._anchors else []) + ([next(self._pinned)] if self._pinned else [])
            batch = {k: v.to(self.args.device) for k, v in self._collate(rows).items()}
            feed = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            # the anchor forwards bypass the DDP wrapper: a second forward through it before the backward left the
            # ranks' LoRA weights apart; the one backward still sums these gradients in before they are all-reduced
            inner = self.accelerator.unwrap_model(model)
            with torch.no_grad(), inner.disable_adapter():
                champion = inner(**feed).logits
            kl = anchor_kl(inner(**feed).logits, champion, batch["labels"])
            if (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func:
                kl = kl / self.current_gradient_accumulation_steps  # the Trainer will not divide this loss
            loss, *rest = result if return_outputs else (result,)
            loss = loss + self.anchor_weight * kl
            return (loss, *rest) if return_outputs else loss

    return AnchoredSFTTrainer
