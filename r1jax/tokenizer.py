"""One small tokenizer interface over sentencepiece `.model` files and HF
`tokenizer.json` files, with left-padded batch encoding for prompts.

Special tokens come from the checkpoint's own files: the sentencepiece model's
ids, or for HF `tokenizer_config.json` (bos/eos/pad strings), falling back to
`generation_config.json` / `config.json` ids.
"""
import json
import os
from typing import Sequence

import numpy as np


class Tokenizer:
  """Common interface. Subclasses set vocab_size, bos_id, eos_id, pad_id.

  `stop_ids` are the ids that end a completion (the eos, plus every id in
  generation_config.json's eos_token_id list, plus what `set_stop_ids` adds):
  decoding stops at the first of them, exactly where the sampler stops.
  """

  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int
  _extra_stop_ids: frozenset = frozenset()

  @property
  def stop_ids(self) -> frozenset:
    base = frozenset() if self.eos_id is None else frozenset({self.eos_id})
    return base | self._extra_stop_ids

  def set_stop_ids(self, ids) -> tuple[int, ...]:
    """Adds `ids` (e.g. the model config's eos ids); returns all stop ids,
    sorted, for the sampler."""
    self._extra_stop_ids = self._extra_stop_ids | frozenset(int(i) for i in ids)
    return tuple(sorted(self.stop_ids))

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    raise NotImplementedError

  def _decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
    """Text of `ids` up to (not including) the first stop id."""
    ids = [int(i) for i in ids]
    if stop_at_eos:
      stops = self.stop_ids
      end = next((j for j, i in enumerate(ids) if i in stops), len(ids))
      ids = ids[:end]
    return self._decode(ids)

  def encode_batch(self, texts: Sequence[str], max_len: int | None = None,
                   add_bos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids [B, T] int32 and a mask [B, T] (True for real tokens).

    T is `max_len` when given (a text longer than that is an error, not a
    silent truncation), else the longest text.
    """
    seqs = [self.encode(t, add_bos=add_bos) for t in texts]
    longest = max((len(s) for s in seqs), default=0)
    T = longest if max_len is None else max_len
    if longest > T:
      i = max(range(len(seqs)), key=lambda j: len(seqs[j]))
      raise ValueError(f'text {i} has {len(seqs[i])} tokens > max_len={T}: '
                       f'{texts[i][:80]!r}...')
    ids = np.full((len(seqs), T), self.pad_id, np.int32)
    mask = np.zeros((len(seqs), T), bool)
    for i, s in enumerate(seqs):
      if s:
        ids[i, T - len(s):] = s
        mask[i, T - len(s):] = True
    return ids, mask

  def decode_batch(self, ids_BxT: np.ndarray, mask_BxT: np.ndarray | None = None,
                   stop_at_eos: bool = True) -> list[str]:
    """Decodes each row, skipping positions where the mask is False."""
    ids_BxT = np.asarray(ids_BxT)
    if mask_BxT is None:
      mask_BxT = np.ones(ids_BxT.shape, bool)
    return [self.decode(row[np.asarray(m, bool)], stop_at_eos)
            for row, m in zip(ids_BxT, mask_BxT)]


class SentencePieceTokenizer(Tokenizer):

  def __init__(self, model_file: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.sp = spm.SentencePieceProcessor(model_file=model_file)
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
    pad = self.sp.pad_id()
    self.pad_id = pad if pad >= 0 else (self.eos_id if self.eos_id is not None else 0)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self.sp.encode(text)
    return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

  def _decode(self, ids: list[int]) -> str:
    return self.sp.decode(ids)

  def piece_to_id(self, piece: str) -> int:
    return self.sp.piece_to_id(piece)

  def hf_files(self) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json for `transformers` and the
    `tokenizers` library (the layout of an exported model), for a
    SentencePiece BPE model like the tiny base's: the same ids as
    SentencePiece on text that does not start with a tag or a number below
    100 (SentencePiece puts a lone '▁' first) and does not end in spaces
    (SentencePiece drops them); tests/export_test.py checks every prompt and
    completion of the built-in task."""
    import tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self.sp.serialized_model_proto())
    if proto.trainer_spec.model_type != 2 or proto.trainer_spec.byte_fallback:
      raise ValueError('only SentencePiece BPE models without byte fallback convert')
    pieces = proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    normal, user, control = 1, 4, (2, 3)  # piece types: normal, user-defined, unk/control
    # Every way a piece splits into two pieces, applied as SentencePiece
    # merges: the higher-scoring result first.
    merges = sorted(((-pieces[i].score, vocab[a], vocab[b]), (a, b))
                    for piece, i in vocab.items() if pieces[i].type == normal
                    for a, b in ((piece[:k], piece[k:]) for k in range(1, len(piece)))
                    if a in vocab and b in vocab)
    tok = tokenizers.Tokenizer(models.BPE(vocab, [m for _, m in merges],
                                          unk_token=proto.trainer_spec.unk_piece, fuse_unk=True))
    spec = proto.normalizer_spec
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
      steps.append(normalizers.Replace(Regex(' {2,}'), ' '))
    tok.normalizer = normalizers.Sequence(steps)
    scheme = 'first' if spec.add_dummy_prefix else 'never'
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme=scheme,
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.Fuse()] + (
        [decoders.Strip(' ', 1, 0)] if spec.add_dummy_prefix else []))
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in pieces if p.type in control])
    tok.add_tokens([AddedToken(p.piece, special=False, normalized=False)
                    for p in pieces if p.type == user])
    piece = self.sp.id_to_piece
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': False,
              'add_eos_token': False, 'clean_up_tokenization_spaces': False,
              'bos_token': None, 'eos_token': piece(self.eos_id) if self.eos_id is not None
              else None, 'pad_token': piece(self.pad_id), 'unk_token': piece(self.sp.unk_id()),
              'model_max_length': 1_000_000}
    return {'tokenizer.json': tok.to_str(pretty=True),
            'tokenizer_config.json': json.dumps(config, indent=2)}


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


class HFTokenizer(Tokenizer):

  def __init__(self, directory: str):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self.tok = tokenizers.Tokenizer.from_file(os.path.join(directory, 'tokenizer.json'))
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    tok_cfg = _read_json(os.path.join(directory, 'tokenizer_config.json'))
    gen_cfg = _read_json(os.path.join(directory, 'generation_config.json'))
    model_cfg = _read_json(os.path.join(directory, 'config.json'))

    def special(name: str) -> int | None:
      tok = tok_cfg.get(f'{name}_token')
      if isinstance(tok, dict):
        tok = tok.get('content')
      if isinstance(tok, str):
        tid = self.tok.token_to_id(tok)
        if tid is None:
          raise ValueError(f'{directory}: {name}_token {tok!r} is not in the vocabulary')
        return tid
      for cfg in (gen_cfg, model_cfg):
        tid = cfg.get(f'{name}_token_id')
        if isinstance(tid, list):
          tid = tid[0] if tid else None
        if tid is not None:
          return int(tid)
      return None

    self.bos_id, self.eos_id = special('bos'), special('eos')
    listed = gen_cfg.get('eos_token_id', model_cfg.get('eos_token_id'))
    listed = listed if isinstance(listed, list) else [] if listed is None else [listed]
    self._extra_stop_ids = frozenset(int(i) for i in listed)
    pad = special('pad')
    self.pad_id = pad if pad is not None else (
        self.eos_id if self.eos_id is not None else 0)
    self._special = {i for i in (self.bos_id, self.eos_id, pad) if i is not None}

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self.tok.encode(text, add_special_tokens=False).ids
    return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

  def _decode(self, ids: list[int]) -> str:
    return self.tok.decode([i for i in ids if i not in self._special],
                           skip_special_tokens=False)

  def piece_to_id(self, piece: str) -> int | None:
    return self.tok.token_to_id(piece)


def load_tokenizer(path: str) -> Tokenizer:
  """A `.model` file, or a directory holding tokenizer.json or tokenizer.model."""
  if os.path.isfile(path):
    if path.endswith('.json'):
      return HFTokenizer(os.path.dirname(path) or '.')
    return SentencePieceTokenizer(path)
  if os.path.exists(os.path.join(path, 'tokenizer.json')):
    return HFTokenizer(path)
  if os.path.exists(os.path.join(path, 'tokenizer.model')):
    return SentencePieceTokenizer(os.path.join(path, 'tokenizer.model'))
  raise FileNotFoundError(
      f'{path}: no tokenizer.json or tokenizer.model (or a .model file)')
