// Generated from service_core/models.py by `python -m api.dashboard`; do not edit.
export const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
export const TERMINAL_STATUSES = ["succeeded", "failed", "cancelled"];
