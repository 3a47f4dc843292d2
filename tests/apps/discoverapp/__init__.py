"""An app with an actors module, an extra module and a broker class that counts its instances."""
