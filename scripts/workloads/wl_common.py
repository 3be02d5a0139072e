"""Shared code for the benchmark workload generators (make_w1.py, make_w2.py, make_w3.py, eval_w1.py).

Contents:
- pure-Python safetensors reader/writer (numpy arrays in and out, no extra package);
- a BERT WordPiece tokenizer built from vocab.txt (matches BertTokenizer with do_lower_case=True);
- a BERT encoder written with plain torch ops (all-MiniLM-L6-v2 layout), mean pooling, a linear head;
- the Debian package-description text tasks used by W1 (parsed from `apt-cache dumpavail`);
- small helpers (atomic writes, JSON, file hashes, delta statistics).

Everything that has randomness takes an explicit seed. Torch runs single-threaded (set_num_threads(1))
so that results are bit-for-bit repeatable on one machine.
"""

import hashlib
import json
import math
import os
import re
import struct
import subprocess
import unicodedata

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA_DIR = os.path.join(REPO_ROOT, "data")


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------

def atomic_write_bytes(path, chunks):
    """Writes an iterable of byte chunks to PATH through a temp file + rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj, compact=False):
    if compact:
        text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    else:
        text = json.dumps(obj, indent=1, sort_keys=True)
    atomic_write_bytes(path, [text.encode("utf-8"), b"\n"])


def read_json(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def rel(path):
    """Path relative to the repository root (what manifests store)."""
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)


# --------------------------------------------------------------------------------------------------
# safetensors (pure Python + numpy)
# --------------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_NP_TO_ST = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
    np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL",
}


def read_safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


def read_safetensors(path, upcast_bf16=True):
    """Returns {name: numpy array}. BF16 tensors are widened to float32 when upcast_bf16 (exact)."""
    header, base = read_safetensors_header(path)
    with open(path, "rb") as f:
        f.seek(base)
        blob = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dt}")
        a, b = info["data_offsets"]
        arr = np.frombuffer(blob, dtype=_ST_DTYPES[dt], count=(b - a) // np.dtype(_ST_DTYPES[dt]).itemsize,
                            offset=a)
        if dt == "BF16" and upcast_bf16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: numpy array} as safetensors: 8-byte little-endian header length, JSON header with
    keys sorted by name (and __metadata__ when given), padded with spaces to a multiple of 8, then the
    raw little-endian data of each tensor in name order. Deterministic byte for byte."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    order = sorted(tensors)
    arrays = []
    for name in order:
        arr = np.asarray(tensors[name])
        st = _NP_TO_ST.get(arr.dtype)
        if st is None:
            raise ValueError(f"tensor {name}: unsupported numpy dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        nbytes = arr.nbytes
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        arrays.append(arr)
    hjson = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)

    def chunks():
        yield struct.pack("<Q", len(hjson))
        yield hjson
        for arr in arrays:
            yield arr.tobytes()

    atomic_write_bytes(path, chunks())


# --------------------------------------------------------------------------------------------------
# BERT WordPiece tokenizer (uncased)
# --------------------------------------------------------------------------------------------------

def _is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BertTokenizer(do_lower_case=True, tokenize_chinese_chars=True) from a vocab.txt."""

    def __init__(self, vocab_path, max_chars_per_word=100):
        self.vocab = {}
        with open(vocab_path, "r", encoding="utf-8") as f:
            for i, line in enumerate(f):
                tok = line.rstrip("\n")
                if tok not in self.vocab:
                    self.vocab[tok] = i
        self.max_chars = max_chars_per_word
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.unk_id = self.vocab["[UNK]"]
        self.pad_id = self.vocab["[PAD]"]

    def basic_tokens(self, text):
        # clean: drop NUL / replacement char / control chars; whitespace -> space
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(" " + ch + " ")
            else:
                out.append(ch)
        text = "".join(out)
        tokens = []
        for word in text.strip().split():
            word = word.lower()
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            cur = []
            for ch in word:
                if _is_punctuation(ch):
                    if cur:
                        tokens.append("".join(cur))
                        cur = []
                    tokens.append(ch)
                else:
                    cur.append(ch)
            if cur:
                tokens.append("".join(cur))
        return tokens

    def wordpiece(self, word):
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = "##" + piece
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def encode(self, text, max_len=48):
        """[CLS] tokens [SEP], truncated so the whole sequence has at most max_len ids."""
        ids = []
        for w in self.basic_tokens(text):
            ids.extend(self.wordpiece(w))
        ids = ids[: max_len - 2]
        return [self.cls_id] + ids + [self.sep_id]


# --------------------------------------------------------------------------------------------------
# BERT encoder from plain torch ops
# --------------------------------------------------------------------------------------------------

MINILM_CONFIG = {"hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536, "eps": 1e-12,
                 "vocab": 30522, "max_pos": 512, "type_vocab": 2}


def setup_torch(threads=1):
    import torch
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch


def make_bert(torch, cfg=MINILM_CONFIG, dropout=0.1):
    """Returns an nn.Module whose state_dict names are exactly the Hugging Face BertModel names
    (embeddings.*, encoder.layer.N.*, pooler.*), so base weights load by name."""
    nn = torch.nn
    F = torch.nn.functional
    H, NH, I, eps = cfg["hidden"], cfg["heads"], cfg["intermediate"], cfg["eps"]

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg["vocab"], H)
            self.position_embeddings = nn.Embedding(cfg["max_pos"], H)
            self.token_type_embeddings = nn.Embedding(cfg["type_vocab"], H)
            self.LayerNorm = nn.LayerNorm(H, eps=eps)
            # kept as a buffer so the state dict matches the base file (I64 [1, max_pos])
            self.register_buffer("position_ids", torch.arange(cfg["max_pos"]).unsqueeze(0))

        def forward(self, ids):
            pos = self.position_ids[:, : ids.shape[1]]
            x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(
                torch.zeros_like(ids))
            return F.dropout(self.LayerNorm(x), dropout, self.training)

    class SelfAttn(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)

    class AttnOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(H, H)
            self.LayerNorm = nn.LayerNorm(H, eps=eps)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.self = SelfAttn()
            self.output = AttnOut()

        def forward(self, x, bias):
            B, T, _ = x.shape
            s = self.self

            def split(t):
                return t.view(B, T, NH, H // NH).transpose(1, 2)

            q, k, v = split(s.query(x)), split(s.key(x)), split(s.value(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(H // NH) + bias
            p = F.dropout(scores.softmax(-1), dropout, self.training)
            ctx = (p @ v).transpose(1, 2).reshape(B, T, H)
            o = F.dropout(self.output.dense(ctx), dropout, self.training)
            return self.output.LayerNorm(o + x)

    class Inter(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(H, I)

    class Out(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(I, H)
            self.LayerNorm = nn.LayerNorm(H, eps=eps)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attn()
            self.intermediate = Inter()
            self.output = Out()

        def forward(self, x, bias):
            x = self.attention(x, bias)
            h = F.gelu(self.intermediate.dense(x))
            h = F.dropout(self.output.dense(h), dropout, self.training)
            return self.output.LayerNorm(h + x)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList([Layer() for _ in range(cfg["layers"])])

    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(H, H)  # unused by mean pooling; carried so names match the base

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = Emb()
            self.encoder = Enc()
            self.pooler = Pooler()

        def forward(self, ids, mask):
            """ids, mask: [B, T] int64 / float (1 = token, 0 = pad). Returns mean-pooled [B, H]."""
            bias = (1.0 - mask)[:, None, None, :] * -1e9
            x = self.embeddings(ids)
            for layer in self.encoder.layer:
                x = layer(x, bias)
            m = mask.unsqueeze(-1)
            return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    return Bert()


def load_weights(torch, module, arrays, strict=True):
    """Loads {name: numpy array} into module by name; checks names and shapes."""
    sd = module.state_dict()
    missing = sorted(set(sd) - set(arrays))
    extra = sorted(set(arrays) - set(sd))
    if strict and (missing or extra):
        raise ValueError(f"weight names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    new = {}
    for k, v in sd.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"{k}: shape {a.shape} != {tuple(v.shape)}")
        new[k] = torch.from_numpy(np.ascontiguousarray(a)).to(v.dtype)
    module.load_state_dict(new)


def state_to_numpy(module):
    return {k: v.detach().cpu().contiguous().numpy().copy() for k, v in module.state_dict().items()}


def pad_batch(torch, seqs, pad_id=0):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1.0
    return ids, mask


EVAL_BATCH = 50


def predict(torch, encoder, head_w, head_b, seqs, batch=EVAL_BATCH):
    """Class ids for token-id sequences; fixed batching (EVAL_BATCH, pad to batch max) so that the
    recorded predictions and eval_w1.py compute exactly the same thing."""
    encoder.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            ids, mask = pad_batch(torch, seqs[i: i + batch])
            logits = encoder(ids, mask) @ head_w.t() + head_b
            preds.extend(int(p) for p in logits.argmax(-1))
    return preds


# --------------------------------------------------------------------------------------------------
# Debian package descriptions -> text classification tasks
# --------------------------------------------------------------------------------------------------

def parse_dumpavail(text):
    """Parses `apt-cache dumpavail` output into a list of per-package dicts (the fields W1 uses)."""
    recs = []
    cur, last = {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                recs.append(cur)
            cur, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                cur[last] += " " + line.strip()
            continue
        k, _, v = line.partition(":")
        cur[k] = v.strip()
        last = k
    if cur:
        recs.append(cur)
    out = {}
    for r in recs:
        name = r.get("Package")
        desc = r.get("Description", "").strip()
        if not name or not desc:
            continue
        roles = sorted(set(t for t in re.split(r"[,\s]+", r.get("Tag", "")) if t.startswith("role::")))
        out[name] = {
            "package": name,
            "description": desc,
            "section": r.get("Section", ""),
            "priority": r.get("Priority", ""),
            "architecture": r.get("Architecture", ""),
            "roles": roles,
        }
    return [out[k] for k in sorted(out)]


def load_packages(path, dumpavail=None):
    """The package table W1 is built from. It is read from PATH (JSON lines) when that exists, so a
    rerun uses the very same text; otherwise it is parsed from DUMPAVAIL (a file), or from
    `apt-cache dumpavail`, and saved to PATH."""
    if os.path.exists(path) and dumpavail is None:
        with open(path, "r", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if dumpavail:
        with open(dumpavail, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True).stdout.decode(
            "utf-8", errors="replace")
    pkgs = parse_dumpavail(text)
    lines = [json.dumps(p, sort_keys=True, ensure_ascii=False) + "\n" for p in pkgs]
    atomic_write_bytes(path, [l.encode("utf-8") for l in lines])
    return pkgs


ROLE_CLASSES = ["role::program", "role::shared-lib", "role::devel-lib", "role::documentation",
                "role::app-data"]


def build_task(task, pkgs, n_sections=12):
    """Returns (class_names, [(package, description, label)]) for one task.

    section : Section, the n_sections most frequent sections (ties by name); other packages dropped.
    role    : debtags role of packages tagged with exactly one of ROLE_CLASSES.
    islib   : does the package name start with "lib" (the name is not in the input text).
    arch    : Architecture "all" (arch-independent) vs any other (arch-specific build).
    """
    if task == "section":
        counts = {}
        for p in pkgs:
            counts[p["section"]] = counts.get(p["section"], 0) + 1
        classes = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_sections]]
        idx = {c: i for i, c in enumerate(classes)}
        ex = [(p["package"], p["description"], idx[p["section"]]) for p in pkgs if p["section"] in idx]
    elif task == "role":
        classes = list(ROLE_CLASSES)
        idx = {c: i for i, c in enumerate(classes)}
        ex = [(p["package"], p["description"], idx[p["roles"][0]]) for p in pkgs
              if len(p["roles"]) == 1 and p["roles"][0] in idx]
    elif task == "islib":
        classes = ["other", "lib*"]
        ex = [(p["package"], p["description"], int(p["package"].startswith("lib"))) for p in pkgs]
    elif task == "arch":
        classes = ["any", "all"]
        ex = [(p["package"], p["description"], int(p["architecture"] == "all")) for p in pkgs]
    else:
        raise ValueError(f"unknown task {task}")
    return classes, ex


def split_task(task, examples, n_heldout=1000):
    """Deterministic train / held-out split. Examples are grouped by description text (identical
    descriptions never straddle the split); groups are ordered by sha256(task + description) and the
    first groups fill the held-out set up to exactly n_heldout examples (packages in name order)."""
    groups = {}
    for e in examples:
        groups.setdefault(e[1], []).append(e)
    order = sorted(groups, key=lambda d: hashlib.sha256((task + "\0" + d).encode("utf-8")).hexdigest())
    held, train = [], []
    for d in order:
        g = sorted(groups[d])
        if len(held) < n_heldout:
            held.extend(g[: n_heldout - len(held)])  # a group cut at the boundary is dropped, not split
        else:
            train.extend(g)
    train.sort(key=lambda e: hashlib.sha256((task + "\1" + e[0]).encode("utf-8")).hexdigest())
    return train, held


# --------------------------------------------------------------------------------------------------
# delta statistics
# --------------------------------------------------------------------------------------------------

def delta_stats(model, base):
    """Relative size of model - base over the float tensors: mean|d| / mean|b|, ||d|| / ||b||, std."""
    sad = sab = ssd = ssb = n = 0.0
    changed = 0
    total = 0
    for k, b in base.items():
        if b.dtype.kind != "f":
            continue
        m = model[k].astype(np.float64)
        b = b.astype(np.float64)
        d = m - b
        sad += np.abs(d).sum()
        sab += np.abs(b).sum()
        ssd += (d * d).sum()
        ssb += (b * b).sum()
        n += d.size
        changed += int(np.count_nonzero(d))
        total += d.size
    return {
        "mean_abs_delta_over_mean_abs_base": sad / sab,
        "l2_delta_over_l2_base": math.sqrt(ssd / ssb),
        "delta_rms": math.sqrt(ssd / n),
        "fraction_elements_changed": changed / total,
    }


# --------------------------------------------------------------------------------------------------
# the small MLP of W2 / W3 (scikit-learn digits)
# --------------------------------------------------------------------------------------------------

MLP_SIZES = (64, 256, 128, 10)


def load_digits_split(n_heldout=297, seed=0):
    """scikit-learn's bundled digits (1797 x 64, values 0..16): a fixed permutation (numpy PCG64,
    SEED) puts n_heldout images in the held-out set, the rest in the training set."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.astype(np.int64)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    held, train = perm[:n_heldout], perm[n_heldout:]
    return (x[train], y[train]), (x[held], y[held])


def make_mlp(torch, sizes=MLP_SIZES):
    nn = torch.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(sizes[0], sizes[1])
            self.fc2 = nn.Linear(sizes[1], sizes[2])
            self.fc3 = nn.Linear(sizes[2], sizes[3])

        def forward(self, x):
            x = torch.relu(self.fc1(x))
            x = torch.relu(self.fc2(x))
            return self.fc3(x)

    return MLP()


def mlp_inputs(torch, x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32) / 16.0)


def mlp_predict(torch, mlp, x):
    mlp.eval()
    with torch.no_grad():
        return [int(p) for p in mlp(mlp_inputs(torch, x)).argmax(-1)]


def train_mlp(torch, seed, epochs, train, on_epoch, lr=1e-3, batch=32):
    """Trains a fresh MLP (torch.manual_seed(seed) init; data order from random.Random(seed)) with Adam;
    calls on_epoch(epoch, mlp, mean_train_loss) after initialisation (epoch 0) and every epoch."""
    import random
    F = torch.nn.functional
    torch.manual_seed(seed)
    mlp = make_mlp(torch)
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    x, y = mlp_inputs(torch, train[0]), torch.from_numpy(train[1])
    rng = random.Random(seed)
    on_epoch(0, mlp, None)
    for ep in range(1, epochs + 1):
        perm = list(range(len(y)))
        rng.shuffle(perm)
        mlp.train()
        tot = 0.0
        for i in range(0, len(perm), batch):
            idx = torch.tensor(perm[i: i + batch], dtype=torch.long)
            loss = F.cross_entropy(mlp(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss) * len(idx)
        on_epoch(ep, mlp, tot / len(perm))
    return mlp
