"""Second-stage rerankers over the compressed token summaries stored at ingestion.

- :mod:`models.rerankers.late`: late interaction of the query's CLIP text embedding with a video's
  summary tokens projected into CLIP's joint space (training-free, CPU-friendly).
- :mod:`models.rerankers.llava`: a LLaVA-OneVision video LLM scoring P("yes") over a HoliTom (or
  VQToken) summary computed in the LLM's own visual space, with HoliTom's inner-LLM merge in prefill
  (:mod:`models.rerankers.prefill`: the prompt and prefill as pure functions).
"""
