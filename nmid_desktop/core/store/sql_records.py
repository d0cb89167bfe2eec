"""What a SQL library keeps besides labels: embeddings, predictions, descriptions, usage, splits, meta."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from nmid_desktop.core.errors import (
    LibraryError,
)
from nmid_desktop.core.store.base import (
    SPLITS,
    DescriptionRecord,
    DescriptionRow,
    ImageFilter,
    ImageRecord,
    JsonValue,
    PredictionRecord,
    QueryStart,
)
from nmid_desktop.core.store.sql_base import (
    SqlBase,
    _check_finite,
    _DbRow,
    _in_order,
    _now,
)


class RecordsMixin(SqlBase):
    """Embeddings, predictions, descriptions, API usage, splits and metadata."""

    # -- embeddings ---------------------------------------------------------------------
    def put_embeddings(self, encoder_key: str, image_ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(image_ids):
            raise LibraryError(f"embeddings must have shape (N={len(image_ids)}, D), not {vectors.shape}")
        # Little-endian float32 on disk, whatever the machine: libraries move between PCs.
        data = np.ascontiguousarray(vectors, dtype="<f4")
        dim = int(data.shape[1])
        with self.transaction():
            row = self._q_one("SELECT dim FROM embeddings WHERE encoder_key = ? LIMIT 1", (encoder_key,))
            if row is not None and row[0] != dim:
                raise LibraryError(
                    f"encoder {encoder_key!r} has {row[0]}-dimensional embeddings stored, not {dim}; drop them first"
                )
            try:
                self._many(
                    """INSERT INTO embeddings (encoder_key, image_id, dim, vector) VALUES (?, ?, ?, ?)
                       ON CONFLICT (encoder_key, image_id) DO UPDATE SET dim = excluded.dim, vector = excluded.vector""",
                    ((encoder_key, int(i), dim, data[n].tobytes()) for n, i in enumerate(image_ids)),
                )
            except self._integrity_error as exc:
                raise LibraryError(f"cannot store embeddings: unknown image id ({exc})") from exc

    def embedded_ids(self, encoder_key: str) -> np.ndarray:
        rows = self._q("SELECT image_id FROM embeddings WHERE encoder_key = ? ORDER BY image_id", (encoder_key,))
        return np.fromiter((int(r[0]) for r in rows), dtype=np.int64)

    def get_embeddings(self, encoder_key: str, image_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if image_ids is None:
            rows = self._q(
                "SELECT image_id, dim, vector FROM embeddings WHERE encoder_key = ? ORDER BY image_id", (encoder_key,)
            )
        else:
            # In the order asked for; ids without an embedding are left out.
            table, param = self._id_table(image_ids)
            rows = self._q(
                f"""SELECT e.image_id, e.dim, e.vector FROM {table}
                   JOIN embeddings e ON e.encoder_key = ? AND e.image_id = j.value ORDER BY j.key""",
                (param, encoder_key),
            )
        # Stream the rows into one buffer and view it with one frombuffer: no per-row arrays
        # and no second copy for 20,000 x 1280 vectors (a bytearray keeps the result writable).
        ids: list[int] = []
        buf = bytearray()
        dim = None
        for image_id, row_dim, blob in rows:
            if dim is None:
                dim = row_dim
            elif row_dim != dim or len(blob) != 4 * dim:
                raise LibraryError(f"encoder {encoder_key!r} has embeddings of different sizes stored; drop them")
            ids.append(image_id)
            buf += blob
        if dim is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        flat = np.frombuffer(buf, dtype="<f4")
        return np.asarray(ids, dtype=np.int64), flat.reshape(len(ids), dim).astype(np.float32, copy=False)

    def drop_embeddings(self, encoder_key: str | None = None) -> None:
        with self.transaction():
            if encoder_key is None:
                self._q("DELETE FROM embeddings")
            else:
                self._q("DELETE FROM embeddings WHERE encoder_key = ?", (encoder_key,))

    def embedding_keys(self) -> dict[str, int]:
        """Encoder keys with cached embeddings and how many each has (for ``nmid stats``)."""
        rows = self._q("SELECT encoder_key, COUNT(*) FROM embeddings GROUP BY encoder_key ORDER BY encoder_key")
        return {r[0]: int(r[1]) for r in rows}

    # -- predictions, descriptions, usage -------------------------------------------------
    def add_prediction(self, prediction: PredictionRecord) -> int:
        try:
            return self._insert_one(self._PREDICTION_INSERT, self._prediction_row(prediction))
        except self._integrity_error as exc:
            raise LibraryError(f"cannot store a prediction for image {prediction.image_id}: {exc}") from exc

    _PREDICTION_INSERT = """INSERT INTO predictions (image_id, predictor, label, ranking, confidence, model,
        prompt_version, rationale, demo_ids, valid, reason, tokens_in, tokens_out, cost_usd, at)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"""

    @staticmethod
    def _prediction_row(p: PredictionRecord) -> tuple[object, ...]:
        return (
            int(p.image_id), p.predictor, p.label,
            json.dumps([[str(name), float(prob)] for name, prob in p.ranking]),
            _check_finite(p.confidence, "confidence"), p.model, p.prompt_version, p.rationale or "",
            json.dumps([int(i) for i in p.demo_ids]), int(bool(p.valid)), p.reason or "",
            int(p.tokens_in), int(p.tokens_out), float(p.cost_usd), p.at or _now(),
        )

    # Parameters: encoder key, predictor, image id.
    _QUERY_START = """SELECT i.*, c.name AS label,
        (SELECT e.vector FROM embeddings e WHERE e.encoder_key = ? AND e.image_id = i.id) AS q_vector,
        (SELECT m.value FROM meta m WHERE m.key = 'labels_version') AS q_labels_version,
        (SELECT MAX(p.id) FROM predictions p WHERE p.image_id = i.id AND p.predictor = ?) AS q_answer
        FROM images i LEFT JOIN classes c ON c.id = i.class_id WHERE i.id = ?"""

    def query_start(self, image_id: int, encoder_key: str | None, predictor: str = "lmm") -> QueryStart:
        image_id = int(image_id)
        # One statement (scalar subqueries work in both dialects): the record, its embedding,
        # the labels version and the id of the newest answer, whose row is read only if there is one.
        row = self._q_one(self._QUERY_START, (encoder_key or "", predictor, image_id))
        if row is None:
            raise LibraryError(f"no image with id {image_id} in the library {self.root}")
        blob = row["q_vector"] if encoder_key is not None else None
        embedding = None
        if blob is not None:
            if len(blob) % 4 or not len(blob):
                raise LibraryError(f"encoder {encoder_key!r} has a damaged embedding stored for image {image_id}; drop them")
            embedding = np.frombuffer(bytes(blob), dtype="<f4").astype(np.float32)
        answer = None
        if row["q_answer"] is not None:
            found = self._q_one("SELECT * FROM predictions WHERE id = ?", (int(row["q_answer"]),))
            answer = None if found is None else self._prediction(found)
        return QueryStart(
            record=self._record(row), embedding=embedding,
            labels_version=int(row["q_labels_version"]), answer=answer,
        )

    def query_finish(self, demo_ids: Sequence[int], prediction: PredictionRecord | None) -> list[ImageRecord]:
        if prediction is not None:
            self.add_prediction(prediction)
        return self._demo_records(demo_ids)

    def _demo_records(self, demo_ids: Sequence[int]) -> list[ImageRecord]:
        if not demo_ids:
            return []
        return _in_order({r.id: r for r in self.images(ImageFilter(ids=[int(i) for i in demo_ids]))}, demo_ids)

    @staticmethod
    def _prediction(row: _DbRow) -> PredictionRecord:
        return PredictionRecord(
            image_id=row["image_id"],
            predictor=row["predictor"],
            label=row["label"],
            ranking=[(str(n), float(p)) for n, p in json.loads(row["ranking"])],
            confidence=row["confidence"],
            model=row["model"],
            prompt_version=row["prompt_version"],
            rationale=row["rationale"],
            demo_ids=[int(i) for i in json.loads(row["demo_ids"])],
            valid=bool(row["valid"]),
            reason=row["reason"],
            tokens_in=row["tokens_in"],
            tokens_out=row["tokens_out"],
            cost_usd=row["cost_usd"],
            id=row["id"],
            at=row["at"],
        )

    def predictions(self, image_id: int) -> list[PredictionRecord]:
        rows = self._q("SELECT * FROM predictions WHERE image_id = ? ORDER BY id DESC", (int(image_id),))
        return [self._prediction(r) for r in rows.fetchall()]

    def latest_predictions(self, predictor: str) -> dict[int, PredictionRecord]:
        rows = self._q(
            """SELECT * FROM predictions WHERE id IN
               (SELECT MAX(id) FROM predictions WHERE predictor = ? GROUP BY image_id) ORDER BY image_id""",
            (predictor,),
        ).fetchall()
        return {r["image_id"]: self._prediction(r) for r in rows}

    def add_description(self, description: DescriptionRecord) -> int:
        d = description
        try:
            with self.transaction():
                desc_id = self._insert(
                    "INSERT INTO descriptions (image_id, model, prompt_version, at) VALUES (?, ?, ?, ?)",
                    (int(d.image_id), d.model, d.prompt_version, d.at or _now()),
                )
                self._many(
                    "INSERT INTO description_rows (description_id, position, grp, question, answer) VALUES (?,?,?,?,?)",
                    ((desc_id, n, r.group, r.question, r.answer) for n, r in enumerate(d.rows)),
                )
                return desc_id
        except self._integrity_error as exc:
            raise LibraryError(f"cannot store a description for image {d.image_id}: {exc}") from exc

    def descriptions(self, image_id: int) -> list[DescriptionRecord]:
        heads = self._q("SELECT * FROM descriptions WHERE image_id = ? ORDER BY id DESC", (int(image_id),)).fetchall()
        result = []
        for h in heads:
            rows = self._q(
                "SELECT grp, question, answer FROM description_rows WHERE description_id = ? ORDER BY position",
                (h["id"],),
            ).fetchall()
            result.append(
                DescriptionRecord(
                    image_id=h["image_id"],
                    model=h["model"],
                    prompt_version=h["prompt_version"],
                    rows=[DescriptionRow(r[0], r[1], r[2]) for r in rows],
                    id=h["id"],
                    at=h["at"],
                )
            )
        return result

    def record_usage(self, *, kind: str, model: str, tokens_in: int, tokens_out: int, cost_usd: float, images: int = 0) -> None:
        with self.transaction():
            self._q(
                "INSERT INTO api_usage (at, kind, model, tokens_in, tokens_out, cost_usd, images) VALUES (?,?,?,?,?,?,?)",
                (_now(), kind, model, int(tokens_in), int(tokens_out), float(cost_usd), int(images)),
            )

    def total_cost(self) -> float:
        return float(self._q_one("SELECT COALESCE(SUM(cost_usd), 0) FROM api_usage")[0])

    # -- splits and metadata ---------------------------------------------------------------
    def get_split(self) -> dict[int, str]:
        return {int(r[0]): r[1] for r in self._q("SELECT image_id, split FROM splits ORDER BY image_id")}

    def set_split(self, assignment: dict[int, str]) -> None:
        bad = {s for s in assignment.values() if s not in SPLITS}
        if bad:
            raise LibraryError(f"split must be one of {', '.join(SPLITS)}, not {sorted(bad)}")
        with self.transaction():
            wanted_test = [int(i) for i, s in assignment.items() if s == "test"]
            if wanted_test:
                table, param = self._id_table(wanted_test)
                synthetic = self._q(
                    f"SELECT id FROM images WHERE synthetic = 1 AND id IN (SELECT j.value FROM {table}) LIMIT 1",
                    (param,),
                ).fetchone()
                if synthetic is not None:
                    raise LibraryError(f"image {synthetic[0]} is synthetic and cannot be in the test split")
            try:
                # ON CONFLICT keeps a test assignment: the test set is fixed once defined.
                self._many(
                    """INSERT INTO splits (image_id, split, assigned_at) VALUES (?, ?, ?)
                       ON CONFLICT (image_id) DO UPDATE SET split = excluded.split, assigned_at = excluded.assigned_at
                       WHERE splits.split != 'test'""",
                    ((int(i), s, _now()) for i, s in assignment.items()),
                )
            except self._integrity_error as exc:
                raise LibraryError(f"cannot store the split: unknown image id ({exc})") from exc

    def get_meta(self, key: str, default: JsonValue = None) -> JsonValue:
        row = self._q_one("SELECT value FROM meta WHERE key = ?", (key,))
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: JsonValue) -> None:
        text = json.dumps(value)
        with self.transaction():
            self._q(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )
