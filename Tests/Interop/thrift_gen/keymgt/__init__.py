__all__ = ['ttypes', 'constants', 'APIKeyValidationService']
