"""The demo fleet: fixed demo products, a seeded history and a simulator that keeps it moving.

``model`` holds the pure state machine, ``seed`` writes the products and a fleet with past
audit history, ``simulator`` applies the model's decisions to the database tick by tick.
"""
