"""hf_wsd's budget machinery on other libraries' trainers (optional extras).

- :mod:`hf_wsd.integrations.trl`: TRL's ``SFTTrainer`` (``pip install 'hf_wsd[trl]'``): ``WSDSFTConfig`` and
  ``WSDSFTTrainer``.

Each module imports its library when it is imported, and names the extra to install when the library is missing.
"""
