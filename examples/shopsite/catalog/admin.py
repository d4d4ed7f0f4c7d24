from django.contrib import admin

from catalog.models import Brand, Category, Product, StockLevel

admin.site.register(Category)
admin.site.register(Brand)
admin.site.register(Product)
admin.site.register(StockLevel)
