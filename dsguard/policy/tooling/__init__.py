"""Tooling for policy repositories: line-numbered reading, lint findings and YAML test cases.

Used by ``dsguard policy lint|test|explain``; the guard itself never imports it.
"""
