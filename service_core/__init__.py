"""What the API and the worker both stand on: the settings, the database (models, sessions, migrations), the queue,
the stored artifacts and a job's state changes. No HTTP here (that is api/) and no torch (that is grpo_core/):
the API process imports it without loading the model code, the worker without loading the web code."""
