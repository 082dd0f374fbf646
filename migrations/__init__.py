"""Alembic migrations of the vidseek catalog (``vidseek db upgrade`` or ``alembic upgrade head``)."""
