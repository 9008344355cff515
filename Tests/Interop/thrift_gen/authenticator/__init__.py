__all__ = ['ttypes', 'constants', 'AuthenticatorService']
