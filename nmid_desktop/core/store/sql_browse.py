"""The library browser's pages answered by the store: filters, sort orders, counts (see ``sql.py``).

A browser over a million images cannot load every row into Python and sort there. Every
order here is answered by an index and read with **keyset pagination**: a page ends with a
cursor (the sort key of its last row) and the next page starts strictly after it, so no
page scans the rows before it (no OFFSET) and rows inserted meanwhile neither repeat nor
leave gaps among the rows that were already there.

The review queue is ordered by the latest local prediction's margin (smallest first), then
its entropy (highest first), then the image id: the order of
:func:`nmid_desktop.predict.ranking.uncertainty_order`. Predictions keep their ranking as
JSON, which no index can sort by, so ``queue_keys`` holds each image's key per local
predictor, brought up to date from the predictions table before each page (a catch-up of
the predictions added since; order independent, so two clients catching up at once agree).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nmid_desktop.core.errors import LibraryError
from nmid_desktop.core.store.base import ImageRecord
from nmid_desktop.core.store.sql_base import _IMAGE_SELECT, SqlBase, _DbRow, _in_order

BROWSE_ORDERS = ("id", "uncertain", "disagree")
LOCAL_PREDICTORS = ("knn", "logreg")
_FALLBACK = {"knn": "logreg", "logreg": "knn"}
_CATCH_UP_BATCH = 20_000
# Predictions may commit out of id order on PostgreSQL (sequences hand out ids before the
# commit): each catch-up reads this many ids back before its mark again (upserts are idempotent).
_CATCH_UP_OVERLAP = 1_000


@dataclass(frozen=True)
class BrowseFilter:
    """Which images the browser lists. ``None`` or empty means "do not filter on this".

    Attributes:
        label: Only images of this class.
        source: Only labels set by this source (import, expert, local, lmm, synthetic).
        unlabelled: Only images without a label.
        needs_review: Only images whose label is pending review.
        search: Only images whose file name contains this text (case-insensitive).
    """

    label: str | None = None
    source: str | None = None
    unlabelled: bool = False
    needs_review: bool = False
    search: str = ""


@dataclass(frozen=True)
class BrowseItem:
    """One image of a page, with what the review queue knows of it.

    Attributes:
        record: The image.
        top1: The local prediction's class (None: no ranked local prediction).
        margin: Its margin.
        model_label: The latest valid model (LMM) answer, when there is one.
    """

    record: ImageRecord
    top1: str | None = None
    margin: float | None = None
    model_label: str | None = None


# The cursor is the sort key of the last row: (segment, agree_rank, margin, neg_entropy, id).
BrowseCursor = tuple[int, int, float, float, int]


def ranking_key(ranking: Sequence[Sequence[object]]) -> tuple[str, float, float] | None:
    """``(top1, margin, -entropy)`` of a stored ranking, as ``predict.ranking.Ranking`` computes them.

    The same float operations in the same order, so the store's order and
    ``uncertainty_order`` agree to the last bit. None for an empty ranking.
    """
    items = [(str(c), float(p)) for c, p in ranking]  # type: ignore[arg-type]  # JSON pairs
    if not items:
        return None
    margin = items[0][1] - (items[1][1] if len(items) > 1 else 0.0)
    entropy = -sum(p * math.log(p) for _, p in items if p > 0)
    return items[0][0], margin, -entropy


class BrowseMixin(SqlBase):
    """Keyset pages, counts and the review queue's stored keys."""

    # -- the queue keys ------------------------------------------------------------------
    def refresh_queue_keys(self) -> int:
        """Bring ``queue_keys`` up to date with the predictions table; returns predictions read."""
        total = 0
        while True:
            row = self._q_one("SELECT upto FROM queue_state")
            upto = int(row[0]) if row is not None else 0
            newest = self._q_one("SELECT MAX(id) FROM predictions")[0]
            if newest is None or int(newest) <= upto:
                return total
            start = max(0, upto - _CATCH_UP_OVERLAP) if total == 0 else upto
            rows = self._q(
                "SELECT id, image_id, predictor, label, ranking, valid FROM predictions WHERE id > ? ORDER BY id LIMIT ?",
                (start, _CATCH_UP_BATCH),
            ).fetchall()
            if not rows:
                return total
            with self.transaction():
                self._apply_predictions(rows)
                last = int(rows[-1][0])
                self._q("UPDATE queue_state SET upto = ? WHERE upto < ?", (last, last))
            total += len(rows)

    def _apply_predictions(self, rows: list[_DbRow]) -> None:
        local: list[tuple[Any, ...]] = []
        model: list[tuple[Any, ...]] = []
        for r in rows:
            predictor = r["predictor"]
            if predictor == "lmm":
                model.append((r["image_id"], r["id"], r["label"] or None, int(bool(r["valid"]))))
                continue
            if predictor not in _FALLBACK:
                continue
            key = ranking_key(json.loads(r["ranking"]))
            top1, margin, neg_entropy = key if key is not None else (None, None, None)
            for choice, own in ((predictor, 1), (_FALLBACK[predictor], 0)):
                local.append((choice, r["image_id"], own, r["id"], top1, margin, neg_entropy))
        if model:
            self._many(
                """INSERT INTO queue_model (image_id, prediction_id, label, valid) VALUES (?,?,?,?)
                   ON CONFLICT (image_id) DO UPDATE SET prediction_id = excluded.prediction_id,
                   label = excluded.label, valid = excluded.valid
                   WHERE excluded.prediction_id > queue_model.prediction_id""",
                model,
            )
        if local:
            # A row from the queue's own predictor beats the fallback's; among equals the newest wins.
            self._many(
                """INSERT INTO queue_keys (choice, image_id, own, prediction_id, top1, margin, neg_entropy)
                   VALUES (?,?,?,?,?,?,?)
                   ON CONFLICT (choice, image_id) DO UPDATE SET own = excluded.own,
                   prediction_id = excluded.prediction_id, top1 = excluded.top1, margin = excluded.margin,
                   neg_entropy = excluded.neg_entropy
                   WHERE excluded.own > queue_keys.own
                      OR (excluded.own = queue_keys.own AND excluded.prediction_id > queue_keys.prediction_id)""",
                local,
            )
        touched = sorted({int(r["image_id"]) for r in rows})
        table, param = self._id_table(touched)
        # agree_rank 0: the model's latest valid answer names another class (first in "disagree").
        self._q(
            f"""UPDATE queue_keys SET agree_rank = CASE WHEN EXISTS (
                    SELECT 1 FROM queue_model m WHERE m.image_id = queue_keys.image_id AND m.valid = 1
                    AND m.label IS NOT NULL AND queue_keys.top1 IS NOT NULL AND m.label <> queue_keys.top1)
                THEN 0 ELSE 1 END
                WHERE image_id IN (SELECT j.value FROM {table})""",
            (param,),
        )

    # -- filters ---------------------------------------------------------------------------
    def _browse_where(self, flt: BrowseFilter, queue: bool) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if flt.label is not None:
            clauses.append("i.class_id = (SELECT id FROM classes WHERE name = ?)")
            params.append(flt.label)
        if flt.source is not None:
            clauses.append("i.label_source = ?")
            params.append(flt.source)
        if flt.unlabelled:
            clauses.append("i.class_id IS NULL")
        if flt.needs_review:
            clauses.append("i.review = 'pending'")
        if flt.search.strip():
            clauses.append("LOWER(i.original_name) LIKE ? ESCAPE '\\'")
            text = flt.search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params.append(f"%{text}%")
        if queue:
            # A review queue holds what an expert has not decided yet: unlabelled or pending images.
            clauses.append("(i.review = 'pending' OR i.class_id IS NULL)")
        return clauses, params

    @staticmethod
    def _check_order(order: str, local_predictor: str) -> None:
        if order not in BROWSE_ORDERS:
            raise LibraryError(f"unknown browser order {order!r}; use one of {', '.join(BROWSE_ORDERS)}")
        if order != "id" and local_predictor not in LOCAL_PREDICTORS:
            raise LibraryError(
                f"the review queue orders by a local predictor: {', '.join(LOCAL_PREDICTORS)}, not {local_predictor!r}"
            )

    def browse_count(self, flt: BrowseFilter, *, order: str = "id") -> int:
        """How many images the browser lists for these filters (a review queue: undecided ones)."""
        self._check_order(order, "knn")
        clauses, params = self._browse_where(flt, order != "id")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return int(self._q_one("SELECT COUNT(*) FROM images i" + where, params)[0])

    # -- pages -----------------------------------------------------------------------------
    def browse_ids(
        self,
        flt: BrowseFilter,
        *,
        order: str = "id",
        local_predictor: str = "knn",
        after: BrowseCursor | None = None,
        limit: int = 20_000,
    ) -> tuple[list[int], BrowseCursor | None]:
        """The image ids of the next ``limit`` rows after ``after``: :meth:`browse_page` without the rows.

        The browser lists every id of a query this way (8 bytes a row in memory) and reads
        full rows only for the pages it paints (:meth:`browse_items`).
        """
        rows, cursor = self._browse(flt, order, local_predictor, after, limit, ids_only=True)
        return [int(r["id"]) for r in rows], cursor

    def browse_page(
        self,
        flt: BrowseFilter,
        *,
        order: str = "id",
        local_predictor: str = "knn",
        after: BrowseCursor | None = None,
        limit: int = 500,
    ) -> tuple[list[BrowseItem], BrowseCursor | None]:
        """One page of the browser's rows in its order, starting after ``after``.

        Orders: ``id`` (library order); ``uncertain`` (undecided images with a local
        prediction, most uncertain first, then those without one in library order);
        ``disagree`` (as ``uncertain``, but images whose latest model answer differs from
        the local prediction first).

        Returns:
            The items and the cursor for the next page (None after the last page).

        Raises:
            LibraryError: An unknown order or local predictor, or a limit below 1.
        """
        rows, cursor = self._browse(flt, order, local_predictor, after, limit, ids_only=False)
        return [self._item(r) if order != "id" else BrowseItem(self._record(r)) for r in rows], cursor

    def _browse(
        self, flt: BrowseFilter, order: str, local_predictor: str, after: BrowseCursor | None, limit: int,
        *, ids_only: bool,
    ) -> tuple[list[_DbRow], BrowseCursor | None]:
        self._check_order(order, local_predictor)
        if limit < 1:
            raise LibraryError(f"a page holds at least one row, not {limit}")
        clauses, params = self._browse_where(flt, order != "id")
        if order == "id":
            start = after[4] if after is not None else 0
            rows = self._select(clauses + ["i.id > ?"], [*params, start], None, "i.id", limit, ids_only)
            cursor = (0, 0, 0.0, 0.0, int(rows[-1]["id"])) if len(rows) == limit else None
            return rows, cursor
        self.refresh_queue_keys()
        items: list[_DbRow] = []
        segment = after[0] if after is not None else 0
        if segment == 0:
            # Ranked images: the index on queue_keys gives the order; images are joined by id.
            key = "k.agree_rank, k.margin, k.neg_entropy, k.image_id" if order == "disagree" else (
                "k.margin, k.neg_entropy, k.image_id")
            ranked = [*clauses, "k.margin IS NOT NULL"]
            ranked_params = [*params]
            if after is not None:
                if order == "disagree":
                    ranked.append("(k.agree_rank, k.margin, k.neg_entropy, k.image_id) > (?, ?, ?, ?)")
                    ranked_params += [after[1], after[2], after[3], after[4]]
                else:
                    ranked.append("(k.margin, k.neg_entropy, k.image_id) > (?, ?, ?)")
                    ranked_params += [after[2], after[3], after[4]]
            rows = self._select(ranked, ranked_params, local_predictor, key, limit, ids_only)
            items = rows
            if len(items) == limit:
                last = rows[-1]
                return items, (0, int(last["q_agree"]), float(last["q_margin"]), float(last["q_neg_entropy"]),
                               int(last["id"]))
            after = None
        # Then undecided images without a ranked local prediction, in library order.
        start = after[4] if after is not None and after[0] == 1 else 0
        unranked = [
            *clauses, "i.id > ?",
            "NOT EXISTS (SELECT 1 FROM queue_keys u WHERE u.choice = ? AND u.image_id = i.id AND u.margin IS NOT NULL)",
        ]
        rows = self._select(unranked, [*params, start, local_predictor], None, "i.id", limit - len(items), ids_only)
        items += rows
        cursor = (1, 0, 0.0, 0.0, int(items[-1]["id"])) if len(items) == limit else None
        return items, cursor

    def browse_items(
        self, ids: Sequence[int], *, order: str = "id", local_predictor: str = "knn"
    ) -> list[BrowseItem]:
        """The items of these images, in the order given (a page the browser fetches again)."""
        self._check_order(order, local_predictor)
        if not ids:
            return []
        table, param = self._id_table(ids)
        clause = f"i.id IN (SELECT j.value FROM {table})"
        choice = local_predictor if order != "id" else None
        rows = self._select([clause], [param], choice, "i.id", len(ids), False)
        by_id = {int(r["id"]): (self._item(r) if choice else BrowseItem(self._record(r))) for r in rows}
        return _in_order(by_id, ids)

    def _select(
        self, clauses: list[str], params: list[Any], choice: str | None, order_by: str, limit: int, ids_only: bool
    ) -> list[_DbRow]:
        if choice is None:
            head = "SELECT i.id FROM images i" if ids_only else _IMAGE_SELECT
            sql = head + " WHERE " + " AND ".join(clauses) + f" ORDER BY {order_by} LIMIT ?"
            return list(self._q(sql, [*params, int(limit)]).fetchall())
        # Driven from queue_keys so its index gives the order; the choice parameter comes first.
        columns = "i.id" if ids_only else "i.*, c.name AS label, k.top1 AS q_top1"
        sql = f"""SELECT {columns}, k.margin AS q_margin,
                  k.neg_entropy AS q_neg_entropy, k.agree_rank AS q_agree,
                  CASE WHEN m.valid = 1 THEN m.label END AS q_model
                  FROM queue_keys k JOIN images i ON i.id = k.image_id
                  LEFT JOIN classes c ON c.id = i.class_id
                  LEFT JOIN queue_model m ON m.image_id = k.image_id
                  WHERE k.choice = ? AND {" AND ".join(clauses)} ORDER BY {order_by} LIMIT ?"""
        if order_by == "i.id":  # a page fetched again by id: images without a key are listed too
            sql = sql.replace("FROM queue_keys k JOIN images i ON i.id = k.image_id",
                              "FROM images i LEFT JOIN queue_keys k ON k.image_id = i.id AND k.choice = ?")
            sql = sql.replace("WHERE k.choice = ? AND ", "WHERE ")
        return list(self._q(sql, [choice, *params, int(limit)]).fetchall())

    def _item(self, row: _DbRow) -> BrowseItem:
        record = self._record(row)
        try:
            margin = row["q_margin"]
        except (IndexError, KeyError):  # a row of the unranked part: no queue columns
            margin = None
        if margin is None:
            return BrowseItem(record)
        return BrowseItem(record, top1=row["q_top1"], margin=float(margin), model_label=row["q_model"])
