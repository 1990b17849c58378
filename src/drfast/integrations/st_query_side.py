"""`query_side`: a sentence-transformers model with a frozen document tower and a trainable query tower.

Built on sentence-transformers 6.3.0's query/document routing (`Router.for_query_document`): the "document"
route holds the original modules, frozen, so `encode_document` gives the same vectors as before training
(the index over the corpus stays valid, as in ADORE); the "query" route holds a trainable copy, so
`encode_query` is what training changes. `save` writes both routes; after a reload `encode_document` is
bit-identical to the original model's.
"""
from __future__ import annotations

import copy
import logging

from drfast.common.errors import UsageError, UsageTypeError

logger = logging.getLogger(__name__)

QUERY_ROUTE = "query"
DOCUMENT_ROUTE = "document"
# the trainer's router_mapping for a dataset whose "query" column holds the queries (AdoreLoss' dataset)
ROUTER_MAPPING = {"query": QUERY_ROUTE}


def query_side(model):
    """A SentenceTransformer whose document side is `model`'s modules, frozen, and whose query side is a
    trainable copy of them (sentence-transformers 6.3.0 `Router.for_query_document`).

    A model that already routes queries and documents (e.g. one made by query_side, saved and loaded
    again) is returned with its document route frozen again, so that training resumes where it stopped.
    Train it with `SentenceTransformerTrainingArguments(router_mapping={"query": "query", ...})` (the
    column names of your dataset mapped to the routes) so that the query column goes to the query tower.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    if not isinstance(model, SentenceTransformer):
        raise UsageTypeError("model", f"must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}")
    modules = list(model.children())
    router = document_router(model)
    if router is None:
        if any(isinstance(m, Router) for m in modules):
            raise UsageError("model", "has a Router without 'query' and 'document' routes; query_side needs a "
                                      "plain (single-tower) model or one it made")
        router = Router.for_query_document(query_modules=[copy.deepcopy(m) for m in modules],
                                           document_modules=modules)
        model = SentenceTransformer(modules=[router], device=str(model.device), prompts=dict(model.prompts),
                                    default_prompt_name=model.default_prompt_name,
                                    similarity_fn_name=model.similarity_fn_name,
                                    model_card_data=copy.deepcopy(model.model_card_data))
    for module in router.sub_modules[DOCUMENT_ROUTE]:
        module.requires_grad_(False)
    return model


def document_router(model):
    """The model's Router with "query" and "document" routes (query_side's), or None."""
    from sentence_transformers.base.modules import Router

    for module in model.children():
        if isinstance(module, Router) and {QUERY_ROUTE, DOCUMENT_ROUTE} <= set(module.sub_modules):
            return module
    return None


def trainable_document_parameters(model) -> list:
    """Names of parameters that training would change on the document side: everything trainable outside
    the query route of query_side's Router (all trainable parameters for a model without one)."""
    router = document_router(model)
    query_params = set()
    if router is not None:
        query_params = {id(p) for m in router.sub_modules[QUERY_ROUTE] for p in m.parameters()}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in query_params]
