"""Pretraining on WikiText-2, then fine-tuning on SST-2: which passages and phrases made the classifier say it
(issue 22, the multi-stage setting where the SOURCE paper expects it to beat influence functions).

    tdakit sst2 --archive ../shared/data/sst2-tsv.tar.xz              # once: into the data folder
    tdakit wikitext2 --archive ../shared/data/wikitext2-valid-test.tar.xz
    python benchmarks/text_pretraining.py --subsets 30 --seeds 2      # judged on the pretraining passages
    python benchmarks/text_pretraining.py --stage 1 --subsets 30 --seeds 2   # ... on the fine-tuning phrases

One causal language model and one vocabulary for both stages (lower-cased WikiText-2 valid.txt and the chosen
SST-2 phrases, with two label words). Stage 0 pretrains on WikiText-2 passages (next-token loss everywhere);
stage 1 fine-tunes on SST-2 phrases written as prompts whose continuation is the label word ("<negative>",
"<positive>"), so one task (``LanguageModeling``) and one output head serve both stages. A query is a dev sentence
with its true label word: the measurement is log p(label | sentence) in nats. The fine-tuned model's dev accuracy
(the likelier label word) is printed beside a model fine-tuned without pretraining. Every method is judged
against a ground truth that retrains the whole pipeline without half of one stage's points (fresh seeds).
Writes benchmarks/results/text_pretraining_stage<s>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import tdakit
from tdakit.curvature import Kronecker
from tdakit.datasets import Split, text
from tdakit.evaluation import reliability
from tdakit.experiment import Method, run_experiment
from tdakit.presets import TEXT_EMBEDDINGS
from tdakit.text_models import CausalLM

OUT = Path("benchmarks/results")
LABEL_WORDS = ("<negative>", "<positive>")
PRETRAIN = tdakit.Recipe(lr=0.5, epochs=10, batch_size=32, momentum=0.9, weight_decay=1e-4, schedule="cyclic",
                         warmup=0.2)
FINE_TUNE = tdakit.Recipe(lr=0.3, epochs=10, batch_size=32, momentum=0.9, weight_decay=1e-4, schedule="cyclic",
                          warmup=0.2, seed=1)


@dataclasses.dataclass
class PipelineData:
    vocabulary: text.Vocabulary
    passages: Split  # stage 0: [n, L] ids, next tokens
    phrases: Split  # stage 1: sentence -> label word
    query: Split  # dev sentences -> their true label word
    test: Split  # more dev sentences, for the accuracy
    test_labels: torch.Tensor


def short_balanced(sentences: list[str], labels: np.ndarray, n: int, length: int, seed: int) -> list[int]:
    """n class-balanced rows among the sentences of at most ``length`` words."""
    fits = np.array([i for i, s in enumerate(sentences) if 1 <= len(text.tokens_of(s)) <= length])
    return fits[text.balanced_rows(labels[fits], n, seed)].tolist()


def pipeline_data(passages: int = 1000, phrases: int = 2000, queries: int = 100, length: int = 32,
                  vocab_size: int = 3000, seed: int = 0) -> PipelineData:
    wiki = [w.lower() for w in text.read_wikitext(text.find(None, text.WIKITEXT_FOLDER) / "valid.txt")]
    folder = text.find(None, text.SST2_FOLDER)
    train_text, train_labels = text.read_sst2(folder / "train.tsv")
    dev_text, dev_labels = text.read_sst2(folder / "dev.tsv")
    rows = short_balanced(train_text, train_labels, phrases, length, seed)
    pairs = [(train_text[i], LABEL_WORDS[int(train_labels[i])]) for i in rows]
    query_rows = short_balanced(dev_text, dev_labels, queries, length, seed)
    test_rows = [i for i, s in enumerate(dev_text) if len(text.tokens_of(s)) <= length and i not in query_rows]
    corpus = [wiki] + [text.tokens_of(sentence) + [word] for sentence, word in pairs]
    vocabulary = text.Vocabulary.build(corpus, max_size=vocab_size)

    def labelled(rows: list[int]) -> Split:
        return text.continuations(vocabulary, [(dev_text[i], LABEL_WORDS[int(dev_labels[i])]) for i in rows], length)

    return PipelineData(vocabulary, text.blocks(vocabulary.encode(wiki), length, passages),
                        text.continuations(vocabulary, pairs, length), labelled(query_rows), labelled(test_rows),
                        torch.as_tensor(dev_labels[test_rows]))


def accuracy(model, theta, data: PipelineData) -> float:
    """How often the likelier of the two label words, after the sentence, is the true one."""
    label_ids = torch.tensor(data.vocabulary.encode(list(LABEL_WORDS)))
    at = (data.test.y != tdakit.task.IGNORE).int().argmax(1)  # the label word's position
    with torch.no_grad():
        logits = model(theta, data.test.x)[torch.arange(len(at)), at][:, label_ids]
    return float((logits.argmax(1) == data.test_labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=0, choices=[0, 1], help="whose points are judged")
    parser.add_argument("--subsets", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = pipeline_data()
    model = CausalLM(len(data.vocabulary), width=32, heads=2, depth=1, max_length=32)
    stages = [tdakit.Stage(data.passages, PRETRAIN, name="pretraining on WikiText-2"),
              tdakit.Stage(data.phrases, FINE_TUNE, name="fine-tuning on SST-2")]
    start = time.perf_counter()
    staged = tdakit.train_stages(model, stages, tdakit.LanguageModeling(), progress=False)
    alone = tdakit.train(model, data.phrases, FINE_TUNE, tdakit.LanguageModeling(), progress=False)
    described = (f"{len(data.passages)} WikiText-2 passages ({len(staged.runs[0].batches)} steps), then "
                 f"{len(data.phrases)} SST-2 phrases ({len(staged.runs[1].batches)} steps); "
                 f"{staged.model.num_params:,} parameters, {len(data.vocabulary):,} words; dev accuracy "
                 f"{accuracy(staged.model, staged.final, data):.3f} (without pretraining "
                 f"{accuracy(alone.model, alone.final, data):.3f})")
    print(f"{described} ({time.perf_counter() - start:.0f} s)", flush=True)
    start = time.perf_counter()
    truth = tdakit.groundtruth_stages(staged, data.query, args.stage, subsets=args.subsets, fraction=0.5,
                                      seeds=args.seeds, progress=False)
    print(f"ground truth of stage {args.stage}'s points, M = {args.subsets}, R = {args.seeds}: "
          f"{reliability(truth) if args.seeds > 1 else 'one seed'} ({time.perf_counter() - start:.0f} s)",
          flush=True)
    curvatures = {"": Kronecker(fisher="true"), ", embeddings left out": Kronecker(fisher="true",
                                                                                  exclude=TEXT_EMBEDDINGS)}
    methods = {}
    for label, curvature in curvatures.items():
        methods[f"SOURCE (L=3 per stage){label}"] = Method("source", segments=3, curvature=curvature)
        methods[f"influence (final parameters, pooled data){label}"] = Method("influence", curvature=curvature)
    methods["TracIn"] = Method("tracin")
    table = run_experiment(staged, data.query, methods, truth, stage=args.stage,
                           baseline="influence (final parameters, pooled data)",
                           title=f"pretraining then fine-tuning, stage {args.stage}'s points", progress=False)
    print(table, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / f"text_pretraining_stage{args.stage}.json").write_text(json.dumps(
        {"description": described, "subsets": args.subsets, "seeds": args.seeds, "table": table.as_dict()},
        indent=1, default=str))


if __name__ == "__main__":
    main()
