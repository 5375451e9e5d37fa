"""Files in and out: images the model sees, voice it hears and speaks, documents it reads."""
