"""The influence estimators behind ``influence --estimator``: one module each (see ``influence.base``)."""
