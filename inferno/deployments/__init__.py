"""Serverless deployments: specs, their store, the autoscaler and the manager that drives them."""
