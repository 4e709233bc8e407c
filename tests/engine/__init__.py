"""Tests of the serving engine; factories only, no model."""
