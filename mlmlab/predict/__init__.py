"""Ask a trained checkpoint what belongs at the hidden positions of a sentence.

Used by `mlmlab predict` and by the app's mask explorer, so both say the same thing:

    ref = resolve_checkpoint(store, "3")                 # loading: latest checkpoint of run 3 (or step=2000)
    predictor = cache.get(ref.path)                      # loading: loaded once with weights_only=True
    result = predictor.predict(parse("The {quick} brown fox"), top_k=5)   # results.Prediction

`results` holds the answers as plain data and imports no torch, so the app can read and draw them
without loading it; `predictor` is the model side; `loading` finds checkpoints and keeps predictors.
This package's own import loads nothing.
"""
